"""Stream workers (`steward-predict stream`, real processes) on a real Kafka broker: every input record is scored
exactly once into the output topic or the dead-letter topic, for read_committed readers, however workers are
killed, restarted, added or removed; a shadow never writes an answer and its answers pair with the incumbent's in
the monitor; a canary's share is the challenger's weight."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from steward_harness.kafka import Kafka
from steward_harness.monitors import Monitor
from steward_harness.servers import http_get
from steward_harness.stream_workers import StreamWorker
from tests.support import models
from tests.support.waiting import wait_until

TIMEOUT = 30.0
SCALING_LIMIT = 60_000
"""The most records the scaling test produces, 800 a second, while it waits for added workers to commit."""


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    dead: str
    group: str


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("stream-bundles")
    return {version: models.breast_cancer(directory, version=version).path for version in ("v1", "v2")}


@pytest.fixture(scope="module")
def rows(trained: dict[str, models.Trained]) -> list[dict[str, Any]]:
    return models.records(trained["breast-cancer"].x_test)


@dataclass
class Streams:
    """One test's topics on the broker, and the workers it starts (all killed at its end)."""

    kafka: Kafka
    topics: Topics
    bundles: dict[str, Path]
    started: list[StreamWorker]

    def worker(self, ordinal: int, *more: str, env: dict[str, str] | None = None) -> StreamWorker:
        """Worker `ordinal` of the stream (its transactional id is the same each time it is started), with the
        incumbent v1 unless `more` flags say otherwise."""
        worker = StreamWorker(self.worker_flags(ordinal, *more), env=env or {})
        self.started.append(worker)
        return worker.start()

    def worker_flags(self, ordinal: int, *more: str) -> list[str]:
        topics = self.topics
        return [
            "--model=fraud",
            f"--bundle={self.bundles['v1']}",
            f"--brokers={self.kafka.bootstrap}",
            f"--input-topic={topics.input}",
            f"--output-topic={topics.output}",
            f"--dead-letter-topic={topics.dead}",
            f"--group={topics.group}",
            f"--transactional-id={topics.group}-{ordinal}",
            # Small transactions, many of them: a kill lands in the middle of one.
            "--max-records=100",
            "--transaction-records=200",
            *more,
        ]


@pytest.fixture
def streams(kafka: Kafka, bundles: dict[str, Path]) -> Iterator[Streams]:
    name = f"payments-{uuid.uuid4().hex[:8]}"
    topics = Topics(name, f"{name}.scores", f"{name}.dead", f"{name}-scorer")
    kafka.create_topic(topics.input, partitions=6)
    kafka.create_topic(topics.output, partitions=6)
    kafka.create_topic(topics.dead, partitions=1)
    found = Streams(kafka, topics, bundles, [])
    yield found
    for worker in found.started:
        worker.kill()


def _produce(kafka: Kafka, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = Producer({**kafka.client_config(), "enable.idempotence": True, "linger.ms": 5})
    for key, value in records:
        producer.produce(topic, value=value, key=key)
        producer.poll(0)
    assert producer.flush(TIMEOUT) == 0


def _payments(rows: list[dict[str, Any]], count: int, start: int = 0) -> list[tuple[bytes | None, bytes | None]]:
    return [(f"k{index}".encode(), json.dumps(rows[index % len(rows)]).encode()) for index in range(start, count)]


def _read(kafka: Kafka, topic: str, expected: int, isolation: str = "read_committed") -> list[Any]:
    """Every record of `topic`, once `expected` have been read and nothing more came for two seconds (so extras
    are seen too); fails when fewer than `expected` came within the timeout."""
    consumer = Consumer(
        {
            **kafka.client_config(),
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": isolation,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    found: list[Any] = []
    try:
        consumer.subscribe([topic])
        deadline, quiet = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            batch = [message for message in consumer.consume(500, 0.5) if message.error() is None]
            found += batch
            if len(found) >= expected:
                quiet = quiet if not batch and quiet is not None else time.monotonic()
                if time.monotonic() - quiet >= 2.0:
                    return found
    finally:
        consumer.close()
    raise AssertionError(f"{len(found)} records in {topic}, {expected} expected")


def _keys(messages: list[Any]) -> Counter[bytes]:
    return Counter(message.key() for message in messages)


def _await_commits(worker: StreamWorker, least: int) -> None:
    """Until `worker` has committed `least` transactions."""
    wait_until(lambda: _committed(worker) >= least, 120)


def _committed(worker: StreamWorker) -> float:
    for line in worker.metrics().splitlines():
        if line.startswith("steward_stream_transactions_total{") and 'result="committed"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_workers_killed_mid_transaction_leave_every_record_scored_exactly_once(
    streams: Streams, rows: list[Any]
) -> None:
    kafka, topics, count = streams.kafka, streams.topics, 6000
    _produce(kafka, topics.input, _payments(rows, count))
    worker = streams.worker(0)
    for _ in range(3):
        # SIGKILL while batches are being scored and committed back to back: a transaction is open most of the time.
        _await_commits(worker, 5)
        worker.kill()
        worker = streams.worker(0)  # The same transactional id: the zombie is fenced.
    answers = _read(kafka, topics.output, count)
    assert _keys(answers) == Counter({f"k{index}".encode(): 1 for index in range(count)})
    uncommitted = _read(kafka, topics.output, count, isolation="read_uncommitted")
    print(f"read_uncommitted saw {len(uncommitted) - count} answers of aborted transactions")


def test_poison_records_are_dead_lettered_with_their_reasons_atomically_with_the_offsets(
    streams: Streams, rows: list[Any]
) -> None:
    kafka, topics = streams.kafka, streams.topics
    records = _payments(rows, 2000)
    schema_breaking = dict(rows[0])
    schema_breaking[next(iter(schema_breaking))] = "not a number"
    poison: dict[bytes, tuple[bytes | None, str]] = {}
    for index in range(0, 2000, 100):
        key = f"k{index}".encode()
        value, reason = [
            (b"{not json", "not JSON"),
            (json.dumps(schema_breaking).encode(), "invalid: field"),
            (b"[1, 2, 3]", "expected a JSON object"),
            (None, "no value"),
        ][index // 100 % 4]
        records[index] = (key, value)
        poison[key] = (value, reason)
    _produce(kafka, topics.input, records)
    worker = streams.worker(0)
    _await_commits(worker, 3)
    worker.kill()
    streams.worker(0)
    dead = _read(kafka, topics.dead, len(poison))
    assert _keys(dead) == Counter(dict.fromkeys(poison, 1))
    for message in dead:
        value, reason = poison[message.key()]
        headers = dict(message.headers())
        assert message.value() == value
        assert reason in headers["x-steward-error"].decode()
        assert headers["x-steward-source"].decode().startswith(f"{topics.input}/")
    answers = _read(kafka, topics.output, 2000 - len(poison))
    assert _keys(answers) == Counter({key: 1 for key, _ in records if key not in poison})


def test_scaling_one_to_three_to_one_worker_keeps_every_record_exactly_once(streams: Streams, rows: list[Any]) -> None:
    # Records keep coming while the added workers start, however slowly, and stop again, so there are always
    # records for the partitions each takes over.
    kafka, topics = streams.kafka, streams.topics
    produced, stop = [0], threading.Event()

    def steady() -> None:
        while not stop.is_set() and produced[0] < SCALING_LIMIT:
            _produce(kafka, topics.input, _payments(rows, produced[0] + 200, produced[0]))
            produced[0] += 200
            time.sleep(0.25)

    producing = threading.Thread(target=steady)
    producing.start()
    try:
        _await_commits(streams.worker(0), 5)
        more = [streams.worker(ordinal) for ordinal in (1, 2)]
        for worker in more:
            _await_commits(worker, 2)
        for worker in more:
            worker.stop()
            assert worker.returncode is None or worker.returncode == 0
    finally:
        stop.set()
        producing.join()
    answers = _read(kafka, topics.output, produced[0])
    assert _keys(answers) == Counter({f"k{index}".encode(): 1 for index in range(produced[0])})


def test_a_shadow_never_writes_and_its_answers_pair_with_the_incumbents_in_the_monitor(
    streams: Streams, rows: list[Any], tmp_path: Path
) -> None:
    kafka, topics, count = streams.kafka, streams.topics, 300
    _produce(kafka, topics.input, _payments(rows, count))
    with Monitor(f"sqlite:///{tmp_path / 'monitor.db'}") as monitor:
        worker = streams.worker(
            0,
            f"--challenger-bundle={streams.bundles['v2']}",
            "--shadow",
            f"--monitor-url={monitor.url}",
            "--namespace=payments",
            env={"STEWARD_MONITOR_TOKEN": monitor.predictor_token("payments", "fraud")},
        )
        answers = _read(kafka, topics.output, count)
        query = "namespace=payments&model=fraud&incumbent=v1&challenger=v2"

        def paired() -> dict[str, Any] | None:
            pairs: dict[str, Any] = json.loads(http_get(f"{monitor.url}/v1/pairs?{query}")[1])
            return pairs if pairs["pairs"] == count else None

        pairs = wait_until(paired, 60)
    assert {json.loads(message.value())["version"] for message in answers} == {"v1"}
    assert _keys(answers) == Counter({f"k{index}".encode(): 1 for index in range(count)})
    # Trained alike, the two versions agree on every record they both scored.
    assert (pairs["pairs"], pairs["agreement"]) == (count, 1.0)
    scored = {
        (sample.labels["version"], sample.labels["variant"]): sample.value
        for family in text_string_to_metric_families(worker.metrics())
        for sample in family.samples
        if sample.name == "steward_predictor_requests_total" and sample.labels["code"] == "200"
    }
    assert scored == {("v1", "incumbent"): count, ("v2", "shadow"): count}


def test_a_canary_answers_its_weights_share_of_the_records(streams: Streams, rows: list[Any]) -> None:
    kafka, topics, count, percent = streams.kafka, streams.topics, 3000, 20
    _produce(kafka, topics.input, _payments(rows, count))
    streams.worker(0, f"--challenger-bundle={streams.bundles['v2']}", f"--challenger-percent={percent}")
    answers = _read(kafka, topics.output, count)
    versions = Counter(json.loads(message.value())["version"] for message in answers)
    expected = count * percent / 100
    spread = math.sqrt(count * percent / 100 * (1 - percent / 100))
    assert abs(versions["v2"] - expected) <= 4 * spread, versions
    assert versions["v1"] + versions["v2"] == count


def _lag(worker: StreamWorker) -> dict[tuple[str, str], float]:
    """The worker's lag gauge, by version and partition."""
    return {
        (sample.labels["version"], sample.labels["partition"]): sample.value
        for family in text_string_to_metric_families(worker.metrics())
        for sample in family.samples
        if sample.name == "steward_stream_lag_records"
    }


def _complete(lag: dict[tuple[str, str], float], series: int) -> dict[tuple[str, str], float] | None:
    return lag if len(lag) == series else None


def test_lag_is_reported_for_each_version_by_the_worker_that_owns_each_partition(
    streams: Streams, rows: list[Any]
) -> None:
    kafka, topics, count = streams.kafka, streams.topics, 600
    _produce(kafka, topics.input, _payments(rows, count))
    shadowed = (f"--challenger-bundle={streams.bundles['v2']}", "--shadow")
    first = streams.worker(0, *shadowed)
    # Read before the first transaction commits: every record waits, for each version the worker hosts.
    waiting = wait_until(lambda: _complete(_lag(first), 2 * 6), TIMEOUT, interval=0.05)
    for version in ("v1", "v2"):
        assert sum(value for (hosting, _), value in waiting.items() if hosting == version) == count, waiting
    _read(kafka, topics.output, count)
    wait_until(lambda: not any(_lag(first).values()), TIMEOUT)
    second = streams.worker(1, *shadowed)

    def split() -> tuple[set[str], set[str]] | None:
        owned = [{partition for _, partition in _lag(worker)} for worker in (first, second)]
        whole = owned[0] | owned[1] == {str(partition) for partition in range(6)}
        return (owned[0], owned[1]) if whole and owned[0] and owned[1] and not owned[0] & owned[1] else None

    # After the rebalance each partition is reported by its new owner only: the other forgot it.
    wait_until(split, TIMEOUT)
    assert not any(_lag(second).values())


@pytest.mark.parametrize("after", [0.0, 0.4, 1.0])
def test_a_worker_stopped_while_it_loads_its_bundles_exits_at_once(streams: Streams, after: float) -> None:
    # As PID 1 in a pod a process ignores a SIGTERM it has no handler for: the pod would wait out its grace period.
    # The signal lands `after` seconds into loading: reading the bundle, or replaying its golden examples.
    worker = StreamWorker(streams.worker_flags(0)).launch()
    streams.started.append(worker)
    deadline = time.monotonic() + 60
    while '"loading"' not in (worker.log.read_text() if worker.log.exists() else ""):
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.05)
    time.sleep(after)
    stopped = time.monotonic()
    worker.send(signal.SIGTERM)
    while worker.returncode is None:
        assert time.monotonic() - stopped < 10, worker.tail()
        time.sleep(0.05)
    assert worker.returncode == 0, worker.tail()
    assert '{"stopped": true}' in worker.log.read_text()
