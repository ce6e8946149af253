"""A streaming release as its tests tell it: records produced into a Kafka topic at a steady rate, every answer and
dead letter read back as a reader of the output topics sees them (read_committed), and the streaming ModelDeployment
applied version by version and watched until it reaches a phase."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer

from steward_harness.kafka import Kafka
from steward_harness.kubectl import Kubectl
from tests.support.waiting import wait_until

NAME = "tumours"
ROLLOUT: dict[str, Any] = {
    "validation": {"tolerance": 0.01},
    "shadow": {"percent": 100, "minRequests": 800, "minDuration": "10s"},
    "canary": {"steps": [50], "minRequestsPerStep": 300, "minStepDuration": "10s"},
    "guardrails": [
        {"name": "errorRate", "tolerance": 0.005},
        {"name": "predictionShift", "tolerance": 0.1},
    ],
    "confidence": 0.95,
    "maxDuration": "8m",
}
"""A rollout sized for a test: a shadow of 800 records and a canary step of 300, 10 s each at least (a bad
challenger is judged in shadow on enough records that it never reaches a reader)."""


def create_topics(kafka: Kafka, topic: str, partitions: int = 3) -> None:
    """The input `topic`, its answers' `<topic>.scores` and its dead letters' `<topic>.dead`."""
    kafka.create_topic(topic, partitions=partitions)
    kafka.create_topic(f"{topic}.scores", partitions=partitions)
    kafka.create_topic(f"{topic}.dead", partitions=1)


@dataclass
class Records:
    """Records produced at a steady rate, and every answer and dead letter read back (read_committed)."""

    kafka: Kafka
    topic: str
    rows: list[dict[str, Any]]
    rate: float = 100.0
    produced: int = 0
    answers: list[tuple[bytes, str]] = field(default_factory=list)
    """(key, version that answered) in the order read."""
    dead: list[bytes] = field(default_factory=list)
    _stop_producing: threading.Event = field(default_factory=threading.Event)
    _stop_reading: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Records:
        for target in (self._produce, self._read):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop_producing(self) -> None:
        self._stop_producing.set()
        self._threads[0].join()

    def stop(self) -> None:
        self._stop_producing.set()
        self._stop_reading.set()
        for thread in self._threads:
            thread.join()

    def versions(self) -> Counter[str]:
        return Counter(version for _, version in list(self.answers))

    def drain(self, timeout: float = 120.0) -> None:
        """Stop producing and wait until every record produced is answered or dead-lettered, and a little more:
        anything read after that would be a duplicate."""
        self.stop_producing()
        wait_until(lambda: len(self.answers) + len(self.dead) >= self.produced, timeout=timeout)
        time.sleep(2)

    def unanswered_or_repeated(self) -> dict[bytes, int]:
        """Keys not answered (or dead-lettered) exactly once, with how often they were; empty when each was."""
        keys = Counter(key for key, _ in self.answers) + Counter(self.dead)
        wanted = {f"k{index}".encode() for index in range(self.produced)}
        found = {key: keys.get(key, 0) for key in wanted if keys.get(key, 0) != 1}
        return found | {key: count for key, count in keys.items() if key not in wanted}

    def _produce(self) -> None:
        producer = Producer({**self.kafka.client_config(), "linger.ms": 5})
        encoded = [json.dumps(row).encode() for row in self.rows]
        begun = time.monotonic()
        while not self._stop_producing.is_set():
            producer.produce(self.topic, value=encoded[self.produced % len(encoded)], key=f"k{self.produced}".encode())
            self.produced += 1
            producer.poll(0)
            pause = begun + self.produced / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        producer.flush(30)

    def _read(self) -> None:
        consumer = Consumer(
            {
                **self.kafka.client_config(),
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([f"{self.topic}.scores", f"{self.topic}.dead"])
        try:
            while not self._stop_reading.is_set():
                for message in consumer.consume(500, 0.1):
                    if message.error() is not None:
                        continue
                    key = message.key() or b""
                    if (message.topic() or "").endswith(".dead"):
                        self.dead.append(key)
                    else:
                        self.answers.append((key, json.loads(message.value() or b"{}")["version"]))
        finally:
            consumer.close()


@dataclass
class StreamingRelease:
    """The streaming ModelDeployment NAME in `namespace`, scoring `topic` on `brokers`, applied version by version;
    `streaming` adds to (or replaces) its serving.streaming settings."""

    kubectl: Kubectl
    namespace: str
    brokers: list[str]
    topic: str
    bundles: dict[str, str]
    """Each version's bundle URI."""
    streaming: dict[str, Any] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)
    """The status each time it was read while waiting, in order."""
    begun: float = field(default_factory=time.monotonic)

    def manifest(self, version: str) -> dict[str, Any]:
        return {
            "apiVersion": "steward.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": self.namespace},
            "spec": {
                "owner": {"team": "ml", "contact": "ml@example.com", "runbook": "https://runbooks.example.com/tumours"},
                "model": {"version": version, "bundle": self.bundles[version]},
                "serving": {
                    "mode": "streaming",
                    "streaming": {
                        "brokers": self.brokers,
                        "inputTopic": self.topic,
                        "outputTopic": f"{self.topic}.scores",
                        "deadLetterTopic": f"{self.topic}.dead",
                        "maxRecords": 100,
                        **self.streaming,
                    },
                },
                "rollout": ROLLOUT,
            },
        }

    def phases(self) -> list[str]:
        """The phases seen while waiting, in order, each once per stay."""
        found = [str(status["phase"]) for status in self.seen if status.get("phase")]
        return [phase for index, phase in enumerate(found) if index == 0 or found[index - 1] != phase]

    def apply(self, version: str) -> None:
        self.kubectl.run("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(self.manifest(version)))

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.kubectl.json("get", "modeldeployment", NAME, "-n", self.namespace).get(
            "status", {}
        )
        return status

    def until(self, wanted: str, incumbent: str, timeout: float) -> dict[str, Any]:
        """The status once the phase is `wanted` with `incumbent` serving; AssertionError with the status and the
        namespace's events after `timeout` seconds."""

        def held() -> dict[str, Any] | None:
            status = self.status()
            if status.get("phase") != (self.seen[-1].get("phase") if self.seen else None):
                challenger = (status.get("challenger") or {}).get("version") or ""
                analysis = status.get("lastAnalysis") or {}
                said = f"| {analysis.get('decision')}: {analysis.get('message', '')[:100]}" if analysis else ""
                print(f"[{time.monotonic() - self.begun:5.0f} s] {status.get('phase')} {challenger} {said}", flush=True)
            self.seen.append(status)
            reached = status.get("phase") == wanted and status.get("incumbent", {}).get("version") == incumbent
            return status if reached else None

        try:
            return wait_until(held, timeout=timeout, interval=0.5)
        except TimeoutError:
            events = self.kubectl.run(
                "get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp", check=False
            ).stdout
            raise AssertionError(f"not {wanted} with {incumbent}: {self.status()}\n{events}") from None
