"""steward-predict stream: score a Kafka topic into another, every record exactly once.

Consume, score, produce: the answers and dead letters of the batches consumed since the last commit are produced in
one Kafka transaction together with their consumed offsets, committed every --commit-interval-ms (or sooner, after
--transaction-records records, or as soon as no record comes), and the input is read `read_committed`. A worker that
dies mid-transaction leaves an open
transaction that is aborted (its answers never become visible) and offsets that were never committed (the records
are scored again by whoever owns the partition next). The transactional id is stable per worker (its pod's
ordinal), so a restarted worker fences its predecessor's zombie the moment it starts, and the consumer group's
generation fences a worker that lost its partitions in a rebalance."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from steward_contracts.metrics import STREAM_HALTED, STREAM_LAG, STREAM_TRANSACTIONS
from steward_predictor import scoring
from steward_predictor.bundles import BundleError
from steward_predictor.defaults import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from steward_predictor.metrics import Families, ModelMetrics
from steward_predictor.observers import Metered, PredictionLog
from steward_predictor.prediction_log import Reporter
from steward_predictor.settings import drift_thresholds_set
from steward_predictor.streams import Ceiling, CeilingExceededError, Record, Routing, Stream, Topics, Version

logger = logging.getLogger("steward.stream")

TIMEOUT = 30.0
"""Seconds a transaction's step (begin, offsets, commit, abort) may take before the worker gives up on it."""
HALT_BACKOFF = (1.0, 30.0)
"""A halted worker tries its batch again after the first, doubling up to the second."""
LAG_EVERY = 5.0
"""Seconds between readings of the input partitions' ends for the lag gauge."""
SESSION_TIMEOUT_MS = 10_000
"""How long a worker that stopped heartbeating keeps its partitions."""


@dataclass(frozen=True)
class Connection:
    """Where the stream is, and the client settings (SASL, TLS) a Secret mounts as `key=value` lines."""

    brokers: str
    group: str
    transactional_id: str
    client: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read_client(cls, path: Path | None) -> dict[str, str]:
        """librdkafka settings from a properties file: `key=value` per line, # comments."""
        if path is None:
            return {}
        found = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            key, equals, value = text.partition("=")
            if not equals or not key.strip():
                raise ValueError(f"{path}:{number}: expected key=value")
            found[key.strip()] = value.strip()
        return found


class StreamMetrics:
    """The worker's own series: lag per version and input partition, transactions, and whether it is halted."""

    def __init__(self, model: str, versions: Sequence[str], registry: CollectorRegistry = REGISTRY) -> None:
        self.model = model
        self.versions = tuple(versions)
        """The versions the worker hosts: each has yet to score the records its partitions hold past the
        committed position."""
        self.lag = Gauge(
            STREAM_LAG.name,
            "Records of an assigned partition not yet scored and committed, by each version the worker hosts.",
            STREAM_LAG.labels,
            registry=registry,
        )
        self.transactions = Counter(
            STREAM_TRANSACTIONS.name, "Transactions, by result.", STREAM_TRANSACTIONS.labels, registry=registry
        )
        self.halted = Gauge(
            STREAM_HALTED.name, "1 while no records are taken.", STREAM_HALTED.labels, registry=registry
        )
        self.halted.labels(model).set(0)

    def transaction(self, result: str) -> None:
        self.transactions.labels(self.model, result).inc()

    def behind(self, topic: str, partition: int, records: int) -> None:
        for version in self.versions:
            self.lag.labels(self.model, version, topic, str(partition)).set(records)

    def forget(self, topic: str, partition: int) -> None:
        """A partition gone to another worker: its lag is that worker's to report."""
        for version in self.versions:
            with contextlib.suppress(KeyError):
                self.lag.remove(self.model, version, topic, str(partition))


class Worker:
    """One consumer and one transactional producer, scoring batch after batch until stopped."""

    def __init__(
        self,
        connection: Connection,
        input_topic: str,
        stream: Stream,
        metrics: StreamMetrics,
        *,
        max_records: int = 500,
        max_wait: float = 0.025,
        transaction_records: int = 5000,
        commit_interval: float = 0.1,
    ) -> None:
        self.input_topic = input_topic
        self.stream = stream
        self.metrics = metrics
        self.max_records = max_records
        self.max_wait = max_wait
        self.transaction_records = transaction_records
        self.commit_interval = commit_interval
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.halted: str | None = None
        self._open: list[Record] = []
        """The records whose answers the open transaction holds; empty when none is open."""
        self._opened = 0.0
        self._lag_read = 0.0
        common = {"bootstrap.servers": connection.brokers, **connection.client}
        self.consumer = Consumer(
            {
                **common,
                "group.id": connection.group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                # A worker that dies without leaving the group (killed, its node lost) gives up its partitions
                # after this, rather than the client's 45 s: records wait at most so long for a new owner.
                "session.timeout.ms": SESSION_TIMEOUT_MS,
            }
        )
        self.producer = Producer(
            {**common, "transactional.id": connection.transactional_id, "enable.idempotence": True, "linger.ms": 5}
        )

    def run(self) -> None:
        """Score until `stopping` is set, then leave the group so the partitions move at once."""
        self.producer.init_transactions(TIMEOUT)
        self.consumer.subscribe([self.input_topic], on_assign=self._assigned, on_revoke=self._revoked)
        self.ready.set()
        backoff = HALT_BACKOFF[0]
        try:
            while not self.stopping.is_set():
                try:
                    self.step()
                except CeilingExceededError as error:
                    self._halt(str(error))
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, HALT_BACKOFF[1])
                else:
                    if self.halted is not None:
                        self._resume()
                    backoff = HALT_BACKOFF[0]
            self.commit()  # Stopped: what was scored is committed before the partitions move.
        finally:
            # Whatever stopped it, the group learns at once (an open transaction is aborted by the broker).
            self.ready.clear()
            self.consumer.close()
            self.producer.flush(TIMEOUT)

    def step(self) -> int:
        """Consume one batch, score it and produce its answers into the open transaction, which commits with its
        offsets once it holds `transaction_records` records, has been open `commit_interval` seconds, or no more
        records come; the records taken (0 when none came)."""
        messages = self.consumer.consume(self.max_records, self.max_wait)
        records = self._records(messages)
        self._read_lag()
        if records:
            try:
                batch = self.stream.score(records)
            except CeilingExceededError:
                if self.commit(also=records):
                    self._rewind(records)
                raise
            if not self._open:
                self.producer.begin_transaction()
                self._opened = time.monotonic()
            for message in batch.messages:
                self._produce(message.topic, message.key, message.value, message.headers)
            self._open.extend(records)
        due = not records or len(self._open) >= self.transaction_records
        if self._open and (due or time.monotonic() - self._opened >= self.commit_interval):
            self.commit()
        return len(records)

    def commit(self, also: Sequence[Record] = ()) -> bool:
        """Commit the open transaction with its offsets: True once committed, or when none is open. Aborted (the
        broker asked for it): its records, and `also` (consumed since), are read again from the first, and False.
        Fenced or worse: raised, for this worker must go and a restart takes its partitions over cleanly."""
        records, self._open = self._open, []
        if not records:
            return True
        try:
            self.producer.send_offsets_to_transaction(
                _next_offsets(records), self.consumer.consumer_group_metadata(), TIMEOUT
            )
            while True:
                try:
                    self.producer.commit_transaction(TIMEOUT)
                except KafkaException as error:
                    if not error.args[0].retriable():
                        raise
                    logger.warning("commit failed, retrying: %s", error.args[0])
                else:
                    break
        except KafkaException as error:
            if not _abortable(error):
                raise
            logger.warning("transaction aborted, its records are read again: %s", error.args[0])
            self.producer.abort_transaction(TIMEOUT)
            self.metrics.transaction("aborted")
            self._rewind([*records, *also])
            return False
        self.metrics.transaction("committed")
        return True

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        _told("assigned")(consumer, partitions)
        self._lag_read = 0.0  # Their lag is this worker's to report now, at the next batch.

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions go to another worker: what was scored from them commits first (or is aborted, and the next
        owner reads it again from the committed offsets)."""
        _told("revoked")(consumer, partitions)
        self.commit()
        for part in partitions:
            self.metrics.forget(part.topic, part.partition)

    def _records(self, messages: Sequence[Message]) -> list[Record]:
        found = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                if error.code() != KafkaError._PARTITION_EOF:
                    logger.warning("consumer: %s", error)
                continue
            found.append(
                Record(
                    topic=message.topic() or self.input_topic,
                    partition=message.partition() or 0,
                    offset=message.offset() or 0,
                    key=message.key(),
                    value=message.value(),
                )
            )
        return found

    def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        sent: list[tuple[str, str | bytes | None]] = list(headers)
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=sent)
            except BufferError:
                self.producer.poll(0.1)  # The local queue is full: let deliveries drain it.
            else:
                return

    def _rewind(self, records: Sequence[Record]) -> None:
        """Read the batch again from its first record in each partition still assigned to this worker."""
        first: dict[tuple[str, int], int] = {}
        for record in records:
            where = (record.topic, record.partition)
            first[where] = min(first.get(where, record.offset), record.offset)
        assigned = {(part.topic, part.partition) for part in self.consumer.assignment()}
        for (topic, partition), offset in first.items():
            if (topic, partition) in assigned:
                # A partition on its way to another worker may refuse: that one reads from the committed offset.
                with contextlib.suppress(KafkaException):
                    self.consumer.seek(TopicPartition(topic, partition, offset))

    def _read_lag(self) -> None:
        """Each assigned partition's end less the group's committed offset (its start while nothing is
        committed): what no version has scored and committed yet. Read every LAG_EVERY seconds."""
        now = time.monotonic()
        assigned = self.consumer.assignment() if now - self._lag_read >= LAG_EVERY else []
        if not assigned:
            return
        self._lag_read = now
        try:
            committed = self.consumer.committed(assigned, timeout=1.0)
        except KafkaException:
            return
        for part in committed:
            try:
                start, end = self.consumer.get_watermark_offsets(part, timeout=1.0, cached=False)
            except KafkaException:
                continue
            self.metrics.behind(part.topic, part.partition, max(0, end - max(part.offset, start)))

    def _halt(self, why: str) -> None:
        if self.halted is None:
            logger.error("halted: %s", why)
        self.halted = why
        self.metrics.halted.labels(self.metrics.model).set(1)

    def _resume(self) -> None:
        logger.info("resumed: the incumbent scores again")
        self.halted = None
        self.metrics.halted.labels(self.metrics.model).set(0)


def _told(what: str) -> Callable[[Consumer, list[TopicPartition]], None]:
    def told(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info("%s partitions %s", what, ", ".join(f"{part.topic}/{part.partition}" for part in partitions))

    return told


def _next_offsets(records: Sequence[Record]) -> list[TopicPartition]:
    """The offsets to commit: one past the last record of the batch in each partition."""
    last: dict[tuple[str, int], int] = {}
    for record in records:
        where = (record.topic, record.partition)
        last[where] = max(last.get(where, -1), record.offset)
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in sorted(last.items())]


def _abortable(error: KafkaException) -> bool:
    found = error.args[0]
    return isinstance(found, KafkaError) and bool(found.txn_requires_abort())


class _Health(BaseHTTPRequestHandler):
    """/metrics for Prometheus, /ready while the worker takes records, /healthz while it runs."""

    worker: Worker
    registry: CollectorRegistry = REGISTRY

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._answer(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif self.path == "/ready":
            worker = self.worker
            if worker.ready.is_set() and worker.halted is None:
                self._answer(200, b"ready\n")
            else:
                self._answer(503, (worker.halted or "starting").encode() + b"\n")
        elif self.path == "/healthz":
            self._answer(200, b"ok\n")
        else:
            self._answer(404, b"not found\n")

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve(worker: Worker, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 -- a pod's port
    handler = type("Health", (_Health,), {"worker": worker})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def version(
    args: argparse.Namespace, prefix: str, variant: str, families: Families, reporter: Reporter | None
) -> Version:
    """Load one live version's bundle (refused as a BundleError), its metrics and observers attached."""
    scorer = scoring.load(
        getattr(args, f"{prefix}bundle"),
        digest=getattr(args, f"{prefix}digest"),
        version=getattr(args, f"{prefix}version"),
        allow_pickle=args.allow_pickle,
        trusted_types=args.trust_type,
    )
    metrics = ModelMetrics(families, args.model, scorer.bundle.version, variant)
    metrics.attach(scorer.bundle)
    metrics.thresholds(drift_thresholds_set())
    metrics.ready.set(1)
    scorer.observers.append(Metered(metrics))
    if reporter is not None:
        scorer.observers.append(PredictionLog(reporter, variant))
    return Version(scorer, metrics)


def run(args: argparse.Namespace, install: Callable[[Worker], None] | None = None) -> int:
    """steward-predict stream, once its flags are parsed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _StoppedStartingError.asked.clear()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_starting)
    try:
        started = _start(args)
    except BaseException:
        if not _StoppedStartingError.asked.is_set():  # Raised in the Kafka client's C code, a stop may change type.
            raise
        print(json.dumps({"stopped": True}), flush=True)
        return EXIT_OK
    if isinstance(started, int):
        return started
    worker, reporter = started
    health = serve(worker, args.port, args.host)
    if install is not None:
        install(worker)
    try:
        worker.run()
    except KafkaException as error:
        print(f"steward-predict stream: {error.args[0]}", flush=True)
        return EXIT_FAILED
    finally:
        health.shutdown()
        _close(reporter)
    print(json.dumps({"stopped": True}), flush=True)
    return EXIT_OK


class _StoppedStartingError(BaseException):
    """SIGTERM or SIGINT before the worker ran: nothing was consumed, so nothing is left to finish. Not an
    Exception, so that no handler in the loading it interrupts (a bundle's golden replay) takes it for a failure."""

    asked = threading.Event()


def _stop_starting(*_: object) -> None:
    _StoppedStartingError.asked.set()
    raise _StoppedStartingError


def _start(args: argparse.Namespace) -> tuple[Worker, Reporter | None] | int:
    """The worker with its versions loaded, its signals set to stop it between batches; an exit code when it cannot
    start. Until then a SIGTERM stops start-up at once (loading a bundle can take seconds)."""
    print(json.dumps({"loading": [bundle for bundle in (args.bundle, args.challenger_bundle) if bundle]}), flush=True)
    families = Families()
    reporter = None
    if args.monitor_url:
        reporter = Reporter(args.monitor_url, model=args.model, namespace=args.namespace, token=args.monitor_token)
    try:
        incumbent = version(args, "", "incumbent", families, reporter)
        challenger = None
        if args.challenger_bundle:
            role = "shadow" if args.shadow and not args.challenger_percent else "challenger"
            challenger = version(args, "challenger_", role, families, reporter)
    except BundleError as error:
        print(f"steward-predict stream: bundle refused: {error}", flush=True)
        _close(reporter)
        return EXIT_REFUSED
    try:
        client = Connection.read_client(args.client_config)
        routing = Routing(incumbent, challenger, args.challenger_percent, args.shadow)
        ceiling = Ceiling(args.dead_letter_ceiling)
    except (OSError, ValueError) as error:
        print(f"steward-predict stream: {error}", flush=True)
        _close(reporter)
        return EXIT_USAGE
    connection = Connection(args.brokers, args.group, args.transactional_id, client)
    stream = Stream(routing, Topics(args.output_topic, args.dead_letter_topic), ceiling, args.max_record_bytes)
    worker = Worker(
        connection,
        args.input_topic,
        stream,
        StreamMetrics(args.model, [live.name for live in (incumbent, challenger) if live is not None]),
        max_records=args.max_records,
        max_wait=args.max_wait_ms / 1000,
        transaction_records=args.transaction_records,
        commit_interval=args.commit_interval_ms / 1000,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stopping.set())
    return worker, reporter


def _close(reporter: Reporter | None) -> None:
    if reporter is not None:
        reporter.close()
