"""Benchmark of streaming: records per second from the input topic to the output topic through one
`steward-predict stream` worker, side by side with a bare in-process loop on the same broker and batch size
(consume, pipeline.predict, produce; no validation, no transactions); then end-to-end latency at a steady rate, and
the worker's peak memory. Goals: throughput >= 0.5x the bare loop; p99 latency at 1,000 records/s <= 250 ms.
Run: .venv/bin/python bench/stream.py"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
from confluent_kafka import Consumer, Producer

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from tests.support import models  # noqa: E402

from steward_harness.kafka import Kafka  # noqa: E402
from steward_harness.stream_workers import StreamWorker  # noqa: E402

THROUGHPUT_GOAL = 0.5
LATENCY_GOAL = 0.250
BATCH = 500
PARTITIONS = 3
WARM_UP = 100


def produce(kafka: Kafka, topic: str, rows: list[dict[str, Any]], count: int, prefix: str = "k") -> None:
    producer = Producer({**kafka.client_config(), "linger.ms": 20, "enable.idempotence": True})
    encoded = [json.dumps(row).encode() for row in rows]
    for index in range(count):
        producer.produce(topic, value=encoded[index % len(encoded)], key=f"{prefix}{index}".encode())
        if index % 1000 == 0:
            producer.poll(0)
    producer.flush(60)


class Reader:
    """A read_committed consumer of the output topic, subscribed and holding its partitions before anything is
    measured: its own start-up is not the stream's latency."""

    def __init__(self, kafka: Kafka, topic: str) -> None:
        self.consumer = Consumer(
            {
                **kafka.client_config(),
                "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer.subscribe([topic])
        while not self.consumer.assignment():
            self.consumer.poll(0.05)

    def drain(self, count: int, on_record: Any = None) -> float:
        """Seconds from the first to the last of `count` more records read: the steady rate, without the start-up
        before the first."""
        first, seen = 0.0, 0
        while seen < count:
            # A short wait: consume() returns when its count is reached or its wait is over, so a long wait would be
            # counted as latency at low rates.
            for message in self.consumer.consume(1000, 0.005):
                if message.error() is None:
                    first = first or time.perf_counter()
                    seen += 1
                    if on_record is not None:
                        on_record(message)
        return time.perf_counter() - first

    def close(self) -> None:
        self.consumer.close()


def topics(kafka: Kafka) -> tuple[str, str, str]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(name, PARTITIONS)
    kafka.create_topic(f"{name}.out", PARTITIONS)
    kafka.create_topic(f"{name}.dead", 1)
    return name, f"{name}.out", f"{name}.dead"


def worker(kafka: Kafka, bundle: Path, names: tuple[str, str, str]) -> StreamWorker:
    source, output, dead = names
    flags = [
        "--model=bench",
        f"--bundle={bundle}",
        f"--brokers={kafka.bootstrap}",
        f"--input-topic={source}",
        f"--output-topic={output}",
        f"--dead-letter-topic={dead}",
        f"--group={source}-scorer",
        f"--transactional-id={source}-0",
        f"--max-records={BATCH}",
    ]
    return StreamWorker(flags)


def steward_throughput(kafka: Kafka, bundle: Path, rows: list[dict[str, Any]], count: int) -> tuple[float, int]:
    """(records/s, peak RSS bytes) of one worker scoring `count` records already waiting."""
    names = topics(kafka)
    produce(kafka, names[0], rows, count)
    scorer = worker(kafka, bundle, names).start()
    reader = Reader(kafka, names[1])
    try:
        seconds = reader.drain(count)
        peak = _peak(scorer)
    finally:
        reader.close()
        scorer.stop()
    return (count - 1) / seconds, peak


def bare_throughput(kafka: Kafka, pipeline: Any, rows: list[dict[str, Any]], count: int) -> float:
    """Records/s of the bare loop: consume a batch, predict it with the pipeline, produce the predictions."""
    source, output, _ = topics(kafka)
    produce(kafka, source, rows, count)
    consumer = Consumer({**kafka.client_config(), "group.id": f"{source}-bare", "auto.offset.reset": "earliest"})
    producer = Producer({**kafka.client_config(), "linger.ms": 5})
    consumer.subscribe([source])
    done, started = 0, 0.0
    try:
        while done < count:
            messages = [message for message in consumer.consume(BATCH, 0.025) if message.error() is None]
            if not messages:
                continue
            started = started or time.perf_counter()
            frame = pd.DataFrame([json.loads(message.value() or b"{}") for message in messages])
            for message, prediction in zip(messages, pipeline.predict(frame).tolist(), strict=True):
                producer.produce(output, value=json.dumps({"prediction": prediction}).encode(), key=message.key())
            producer.poll(0)
            done += len(messages)
        producer.flush(60)
    finally:
        consumer.close()
    return count / (time.perf_counter() - started)


def latency(kafka: Kafka, bundle: Path, rows: list[dict[str, Any]], rate: int, seconds: int) -> list[float]:
    """End-to-end seconds (produced to read back, read_committed) of every record sent at a steady `rate`."""
    names = topics(kafka)
    scorer = worker(kafka, bundle, names).start()
    sent: dict[bytes, float] = {}
    found: list[float] = []
    total = rate * seconds

    def steady() -> None:
        # Not idempotent: it would first wait for a producer id, and that wait is no part of the stream.
        producer = Producer({**kafka.client_config(), "linger.ms": 1, "acks": 1})
        encoded = [json.dumps(row).encode() for row in rows]
        begun = time.perf_counter()
        for index in range(total):
            due = begun + index / rate
            while (pause := due - time.perf_counter()) > 0:
                time.sleep(min(pause, 0.005))
            key = f"k{index}".encode()
            sent[key] = time.perf_counter()
            producer.produce(names[0], value=encoded[index % len(encoded)], key=key)
            producer.poll(0)
        producer.flush(60)

    producing = threading.Thread(target=steady)
    reader = Reader(kafka, names[1])
    try:
        # Once the worker owns its partitions and answers: what a steady stream meets, not the start-up.
        produce(kafka, names[0], rows, WARM_UP, prefix="warm-up")
        reader.drain(WARM_UP)
        producing.start()
        reader.drain(total, lambda message: _arrived(message.key(), sent, found))
        producing.join()
    finally:
        reader.close()
        scorer.stop()
    return found


def _arrived(key: bytes, sent: dict[bytes, float], found: list[float]) -> None:
    if key in sent:  # Not a warm-up record.
        found.append(time.perf_counter() - sent[key])


def _peak(scorer: StreamWorker) -> int:
    for line in scorer.metrics().splitlines():
        if line.startswith("process_resident_memory_bytes"):
            return int(float(line.split()[1]))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=50_000, help="records for throughput (default %(default)s)")
    parser.add_argument("--rate", type=int, default=1000, help="records/s for latency (default %(default)s)")
    parser.add_argument("--seconds", type=int, default=20, help="seconds at that rate (default %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="steward-bench-") as scratch, Kafka() as kafka:
        trained = models.breast_cancer(Path(scratch), version="bench")
        rows = models.records(trained.x_test)
        print(f"streaming on one Kafka broker, {PARTITIONS} partitions, batches of {BATCH}")
        stream, rss = steward_throughput(kafka, trained.path, rows, args.records)
        bare = bare_throughput(kafka, trained.pipeline, rows, args.records)
        ratio = stream / bare
        print(f"  throughput: steward-predict stream {stream:,.0f} records/s (exactly once, validated)")
        print(f"              bare consume-predict-produce {bare:,.0f} records/s; ratio {ratio:.2f}")
        print(f"  worker resident memory after {args.records:,} records: {rss / 2**20:,.0f} MiB")
        waits = sorted(latency(kafka, trained.path, rows, args.rate, args.seconds))
        p50, p99 = statistics.median(waits), waits[int(0.99 * (len(waits) - 1))]
        shown = f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
        print(f"  latency at {args.rate:,} records/s for {args.seconds} s: {shown}")
    met = ratio >= THROUGHPUT_GOAL and p99 <= LATENCY_GOAL
    goals = f"throughput >= {THROUGHPUT_GOAL}x bare, p99 <= {LATENCY_GOAL * 1000:.0f} ms"
    print(f"goals: {goals}: {'met' if met else 'missed'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
