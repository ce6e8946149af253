"""A streaming release end to end with the real operator: a ModelDeployment in streaming mode gets a StatefulSet of
stream workers (made, rolled and deleted by Kubernetes' own StatefulSet controller; each pod run as a local process
by the stream plane, as a kubelet would), a real Prometheus scrapes the workers, a real Kafka broker carries the
records. v2 is validated, shadowed, canaried and promoted on evidence; v3, whose feature code fails on some records
and whose predictions shift, is rolled back in shadow, and no reader of the output topic ever sees a v3 answer.
Through every rolling update of the workers, each record is answered exactly once."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from steward_harness import demo
from steward_harness.controlplane import ControlPlane
from steward_harness.kafka import Kafka
from steward_harness.kubectl import Kubectl
from steward_harness.operators import Operator
from steward_harness.prometheus import Prometheus
from steward_harness.stream_plane import StreamPlane
from tests.support.deployments import steward_status
from tests.support.streams import NAME, Records, StreamingRelease, create_topics

PREFIX = "st-"
# While the workers roll back to v2 alone, a partition changing hands is reported by its new owner only once that
# owner has read its committed offsets: the line settles within seconds.
LAG_LINE = re.compile(r"^lag: +v2 [0-9,]+ records over 3 partitions", re.MULTILINE)


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


def test_a_streaming_release_is_promoted_and_a_bad_one_rolled_back_in_shadow_with_every_record_answered_once(
    streamed: Streamed, tmp_path: Path
) -> None:
    kubectl, kafka = streamed.kubectl, streamed.kafka
    namespace, topic = f"{PREFIX}{uuid.uuid4().hex[:10]}", f"tumours-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", namespace)
    create_topics(kafka, topic)
    streamed.plane.namespaces.add(namespace)
    models = demo.train(tmp_path)
    bundles = {version: str(bundle) for version, bundle in models.bundles.items()}
    release = StreamingRelease(kubectl, namespace, [kafka.bootstrap], topic, bundles)
    records = Records(kafka, topic, models.rows).start()
    try:
        release.apply("v1")
        release.until("Stable", "v1", 120)
        release.apply("v2")
        promoted = release.until("Promoted", "v2", 300)
        before_v3 = len(records.answers)
        release.apply("v3")
        rolled = release.until("RolledBack", "v2", 300)
        shown = _shown_until(LAG_LINE, kubectl, namespace, 60)
        records.drain()
    finally:
        records.stop()
        streamed.plane.namespaces.discard(namespace)
        kubectl.run("delete", "modeldeployment", NAME, "-n", namespace)
        kubectl.run("delete", "namespace", namespace, "--wait=false")
    assert promoted["lastAnalysis"]["decision"] in {"promote", "advance"}, promoted["lastAnalysis"]
    assert rolled["rolledBack"]["version"] == "v3"
    # Status showed how far behind each live version was, both during v2's release, and kubectl steward says so.
    lags = [{lag["version"]: lag["partitions"] for lag in status.get("lag", [])} for status in release.seen]
    assert {"v1": 3, "v2": 3} in lags, lags
    assert LAG_LINE.search(shown), shown
    assert "v3" not in records.versions(), "a shadow wrote to the output topic"
    assert records.versions()["v2"] > 0
    assert len(records.answers[before_v3:]) > 0
    assert not records.unanswered_or_repeated()


def _shown_until(line: re.Pattern[str], kubectl: Kubectl, namespace: str, timeout: float) -> str:
    """What `kubectl steward status` shows once it has the line, or at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        shown = steward_status(kubectl, NAME, namespace)
        if line.search(shown) or time.monotonic() > deadline:
            return shown
        time.sleep(2)
