"""A streaming release end to end with the real operator: a ModelDeployment in streaming mode gets a StatefulSet of
stream workers (made, rolled and deleted by Kubernetes' own StatefulSet controller; each pod run as a local process
by the stream plane, as a kubelet would), a real Prometheus scrapes the workers, a real Kafka broker carries the
records. v2 is validated, shadowed, canaried and promoted on evidence; v3, whose feature code fails on some records
and whose predictions shift, is rolled back in shadow, and no reader of the output topic ever sees a v3 answer.
Through every rolling update of the workers, each record is answered exactly once."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, Producer

from steward_harness import demo
from steward_harness.controlplane import ControlPlane
from steward_harness.kafka import Kafka
from steward_harness.kubectl import Kubectl
from steward_harness.operators import Operator
from steward_harness.prometheus import Prometheus
from steward_harness.stream_plane import StreamPlane
from tests.support.waiting import wait_until

PREFIX = "st-"
KUBECTL_STEWARD = Path(sys.executable).parent / "kubectl-steward"
NAME = "tumours"


@dataclass
class Streamed:
    """The operator deciding on evidence from a real Prometheus, and the stream plane running its workers."""

    kubectl: Kubectl
    kafka: Kafka
    plane: StreamPlane
    operator: Operator


@pytest.fixture(scope="module")
def streamed(control_plane: ControlPlane, cluster: Kubectl, kafka: Kafka) -> Iterator[Streamed]:
    prometheus = Prometheus()
    prometheus.start()
    plane = StreamPlane(control_plane.server, control_plane.ssl_context(), prometheus=prometheus).start()
    operator = Operator(
        control_plane.kubeconfig, [f"{PREFIX}*"], prometheus=prometheus.url, env={"STEWARD_RESYNC_SECONDS": "2"}
    ).start()
    try:
        yield Streamed(cluster, kafka, plane, operator)
    finally:
        operator.stop()
        plane.stop()
        prometheus.stop()
        print(f"\noperator log: {operator.log}")


def _manifest(namespace: str, version: str, bundle: Path, kafka: Kafka, topic: str) -> str:
    manifest = {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "owner": {"team": "ml", "contact": "ml@example.com", "runbook": "https://runbooks.example.com/tumours"},
            "model": {"version": version, "bundle": str(bundle)},
            "serving": {
                "mode": "streaming",
                "streaming": {
                    "brokers": [kafka.bootstrap],
                    "inputTopic": topic,
                    "outputTopic": f"{topic}.scores",
                    "deadLetterTopic": f"{topic}.dead",
                    "maxRecords": 100,
                },
            },
            "rollout": {
                "validation": {"tolerance": 0.01},
                "shadow": {"percent": 100, "minRequests": 300, "minDuration": "10s"},
                "canary": {"steps": [50], "minRequestsPerStep": 300, "minStepDuration": "10s"},
                "guardrails": [
                    {"name": "errorRate", "tolerance": 0.005},
                    {"name": "predictionShift", "tolerance": 0.1},
                ],
                "confidence": 0.95,
                "maxDuration": "8m",
            },
        },
    }
    return yaml.safe_dump(manifest)


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


def _status(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = kubectl.json("get", "modeldeployment", NAME, "-n", namespace).get("status", {})
    return status


def test_a_streaming_release_is_promoted_and_a_bad_one_rolled_back_in_shadow_with_every_record_answered_once(
    streamed: Streamed, tmp_path: Path
) -> None:
    kubectl, kafka = streamed.kubectl, streamed.kafka
    namespace, topic = f"{PREFIX}{uuid.uuid4().hex[:10]}", f"tumours-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", namespace)
    kafka.create_topic(topic, partitions=3)
    kafka.create_topic(f"{topic}.scores", partitions=3)
    kafka.create_topic(f"{topic}.dead", partitions=1)
    streamed.plane.namespaces.add(namespace)
    models = demo.train(tmp_path)
    records = Records(kafka, topic, models.rows).start()

    def apply(version: str) -> None:
        manifest = _manifest(namespace, version, models.bundles[version], kafka, topic)
        kubectl.run("apply", "--server-side", "-f", "-", stdin=manifest)

    lags: list[dict[str, int]] = []
    """The partitions each version's lag was read over, each time status was read as the release went."""

    def phase(wanted: str, incumbent: str, timeout: float) -> dict[str, Any]:
        def held() -> dict[str, Any] | None:
            status = _status(kubectl, namespace)
            lags.append({lag["version"]: lag["partitions"] for lag in status.get("lag", [])})
            reached = status.get("phase") == wanted and status.get("incumbent", {}).get("version") == incumbent
            return status if reached else None

        try:
            return wait_until(held, timeout=timeout, interval=0.5)
        except TimeoutError:
            events = kubectl.run("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout
            raise AssertionError(f"not {wanted} with {incumbent}: {_status(kubectl, namespace)}\n{events}") from None

    try:
        apply("v1")
        phase("Stable", "v1", 120)
        apply("v2")
        promoted = phase("Promoted", "v2", 300)
        before_v3 = len(records.answers)
        apply("v3")
        rolled = phase("RolledBack", "v2", 300)
        shown = subprocess.run(
            [str(KUBECTL_STEWARD), "status", NAME, "-n", namespace, f"--kubeconfig={kubectl.kubeconfig}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        records.stop_producing()
        wait_until(lambda: len(records.answers) + len(records.dead) >= records.produced, timeout=120)
        time.sleep(2)  # Anything more would be a duplicate.
    finally:
        records.stop()
        streamed.plane.namespaces.discard(namespace)
        kubectl.run("delete", "modeldeployment", NAME, "-n", namespace)
        kubectl.run("delete", "namespace", namespace, "--wait=false")
    assert promoted["lastAnalysis"]["decision"] in {"promote", "advance"}, promoted["lastAnalysis"]
    assert rolled["rolledBack"]["version"] == "v3"
    # Status showed how far behind each live version was, both during v2's release, and kubectl steward says so.
    assert {"v1": 3, "v2": 3} in lags, lags
    assert re.search(r"^lag: +v2 [0-9,]+ records over 3 partitions", shown, re.MULTILINE), shown
    assert "v3" not in records.versions(), "a shadow wrote to the output topic"
    assert records.versions()["v2"] > 0
    assert len(records.answers[before_v3:]) > 0
    keys = Counter(key for key, _ in records.answers) + Counter(records.dead)
    assert keys == Counter({f"k{index}".encode(): 1 for index in range(records.produced)})
