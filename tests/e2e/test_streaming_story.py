"""The streaming release story on the node: the chart's operator makes a StatefulSet of stream workers that the
node's kubelet runs in containers of the predictor's image, each reading its bundles from a claim; a real Kafka broker
on the node's address carries the records, and the Prometheus that finds pods by their annotations scrapes the
workers. v1 answers the input topic into the output topic; v2 is validated, shadowed, canaried and promoted on
evidence; a bad v3 is rolled back, and no read_committed reader of the output topic ever sees one of its answers;
through every rolling update of the workers, each record is answered (or dead-lettered) exactly once; deleting the
ModelDeployment stops its workers. The tests run in this order, one chapter each, on one story."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from steward_harness import demo, images, node
from steward_harness.clusters import LocalCluster
from steward_harness.kafka import Kafka
from steward_harness.node import NODE_IP
from steward_harness.prometheus import Prometheus
from steward_harness.stream_plane import WORKERS
from tests.conftest import Helm
from tests.e2e.conftest import STREAMING_NAMESPACE
from tests.support import queries
from tests.support.streams import NAME, Records, StreamingRelease, create_topics
from tests.support.waiting import wait_until

NAMESPACE = STREAMING_NAMESPACE
TOPIC = "tumours"
CHAPTER = 300.0
# Two workers sharing three partitions, each asking for little: the node has two cores.
STREAMING = {"replicas": 2, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}


@pytest.fixture(scope="module")
def kafka(local_cluster: LocalCluster) -> Iterator[Kafka]:
    """A Kafka broker on the node's address, so the workers in the node's pods reach it."""
    broker = Kafka(directory=local_cluster.directory / "kafka", host=NODE_IP)
    broker.start()
    yield broker
    broker.stop(keep=True)  # its log stays with the cluster's, which go when every test passed


@dataclass
class Streams:
    cluster: LocalCluster
    prometheus: Prometheus
    release: StreamingRelease
    records: Records
    before_v3: int = 0
    """Answers read before v3 was applied."""


@pytest.fixture(scope="module")
def streams(
    local_cluster: LocalCluster,
    prometheus: Prometheus,
    chart: Helm,
    kafka: Kafka,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Streams]:
    """The story's world: bundles on a claim, the topics, and records flowing from the start to the end."""
    models = demo.train(tmp_path_factory.mktemp("stream-bundles"))
    claim = local_cluster.share_bundles(NAMESPACE, models.bundles)
    bundles = {version: f"{claim}/{version}" for version in models.bundles}
    create_topics(kafka, TOPIC)
    release = StreamingRelease(local_cluster.kubectl, NAMESPACE, [kafka.bootstrap], TOPIC, bundles, streaming=STREAMING)
    records = Records(kafka, TOPIC, models.rows).start()
    try:
        yield Streams(local_cluster, prometheus, release, records)
    finally:
        records.stop()
        # Before the broker stops and the chart's operator goes: the workers leave their group cleanly.
        local_cluster.kubectl.run("delete", "modeldeployment", NAME, "-n", NAMESPACE, "--ignore-not-found")
        wait_until(lambda: not _workers(local_cluster), timeout=120, interval=1)


def _workers(cluster: LocalCluster) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cluster.kubectl.json("get", "pods", "-n", NAMESPACE, "-l", WORKERS)["items"]
    return found


def _settled_workers(cluster: LocalCluster) -> list[str] | None:
    """The workers' arguments once their StatefulSet has rolled out its current template and every worker is ready;
    None while it has not."""
    workers = cluster.kubectl.json("get", "statefulset", NAME, "-n", NAMESPACE)
    status, wanted = workers.get("status") or {}, workers["spec"]["replicas"]
    settled = (
        status.get("observedGeneration") == workers["metadata"]["generation"]
        and status.get("updatedReplicas") == wanted
        and status.get("readyReplicas") == wanted
        and status.get("updateRevision") == status.get("currentRevision")
    )
    arguments: list[str] = workers["spec"]["template"]["spec"]["containers"][0]["args"]
    return arguments if settled else None


def test_v1_answers_the_input_topic_into_the_output_topic_from_the_node_s_pods(streams: Streams) -> None:
    release, records = streams.release, streams.records
    release.apply("v1")
    release.until("Stable", "v1", CHAPTER)
    wait_until(lambda: records.versions()["v1"] >= 200, timeout=60)
    pods = _workers(streams.cluster)
    assert len(pods) == STREAMING["replicas"], [pod["metadata"]["name"] for pod in pods]
    for pod in pods:
        # Kubernetes' StatefulSet controller made the pod, the node runs it from the predictor's image, and the
        # bundle comes from the claim, mounted read-only.
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet"
        assert pod["spec"]["nodeName"] == node.NAME
        assert pod["spec"]["containers"][0]["image"] == images.image_references()["predictor"]
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        mounts = {mount["name"]: mount for mount in pod["spec"]["containers"][0].get("volumeMounts", [])}
        claimed = [name for name, volume in volumes.items() if "persistentVolumeClaim" in volume]
        assert [volumes[name]["persistentVolumeClaim"]["claimName"] for name in claimed] == ["bundles"], volumes
        assert all(mounts[name].get("readOnly") for name in claimed), mounts
        # Prometheus found the worker by its annotations, with its lag for the version it runs.
        lag = f'steward_stream_lag_records{{namespace="{NAMESPACE}",pod="{pod["metadata"]["name"]}",version="v1"}}'
        assert wait_until(partial(queries.instant, streams.prometheus, lag), timeout=30)


def test_v2_is_validated_shadowed_canaried_and_promoted_on_evidence(streams: Streams) -> None:
    release, records = streams.release, streams.records
    release.apply("v2")
    promoted = release.until("Promoted", "v2", CHAPTER)
    assert {"Validating", "Shadowing", "Canary", "Promoted"} <= set(release.phases()), release.phases()
    assert promoted["lastAnalysis"]["decision"] in {"promote", "advance"}, promoted["lastAnalysis"]
    wait_until(lambda: records.versions()["v2"] > 0, timeout=30)


def test_a_bad_v3_is_rolled_back_and_no_reader_ever_sees_its_answers(streams: Streams) -> None:
    release, records = streams.release, streams.records
    streams.before_v3 = len(records.answers)
    release.apply("v3")
    rolled = release.until("RolledBack", "v2", CHAPTER)
    assert rolled["rolledBack"]["version"] == "v3"
    assert rolled["lastAnalysis"]["decision"] == "rollback", rolled["lastAnalysis"]
    # The workers roll back to v2 alone; records flowed all the while, answered by v2.
    arguments = wait_until(partial(_settled_workers, streams.cluster), timeout=120, interval=1)
    assert "--version=v2" in arguments, arguments
    assert not [argument for argument in arguments if argument.startswith("--challenger-")], arguments
    wait_until(lambda: len(records.answers) > streams.before_v3, timeout=30)
    assert "v3" not in records.versions(), "a reader of the output topic saw v3's answers"


def test_every_record_is_answered_exactly_once_across_the_rolling_updates(streams: Streams) -> None:
    records = streams.records
    records.drain()
    print(f"\n{records.produced} records: answers by version {dict(records.versions())}, {len(records.dead)} dead")
    assert records.produced > 0
    assert not records.unanswered_or_repeated()
    assert "v3" not in records.versions()


def test_deleting_the_model_deployment_stops_its_workers(streams: Streams) -> None:
    kubectl = streams.cluster.kubectl
    kubectl.run("delete", "modeldeployment", NAME, "-n", NAMESPACE, "--wait=false")
    started = time.monotonic()
    try:
        wait_until(lambda: not kubectl.json("get", "statefulsets,pods", "-n", NAMESPACE)["items"], timeout=120)
    except TimeoutError:
        left = kubectl.run("get", "statefulsets,pods", "-n", NAMESPACE, "-o", "name").stdout
        pytest.fail(f"left in {NAMESPACE} after the ModelDeployment was deleted:\n{left}")
    print(f"\nthe workers were gone {time.monotonic() - started:.0f} s after the ModelDeployment was deleted")
