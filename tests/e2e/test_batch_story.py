"""The batch release story on the node: the chart's operator makes a CronJob per live version, and each run's pod
(a Job made by Kubernetes' own Job controller) runs on the node's kubelet in a container of the predictor's image,
reading its bundles from a claim and its rows from and to an S3 store on the node's address, with credentials from a
Secret. v1 scores the input into the output; v2's runs score the same rows with v1's bundle too and leave the
comparison in their termination messages, which the real kubelet keeps: v2 is validated and shadowed on them and
promoted with no command; a v3 trained on shuffled outcomes is rolled back in shadow. The tests run in this order,
one chapter each, on one story."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pandas as pd
import pytest

from steward_harness import images, node
from steward_harness.clusters import LocalCluster
from steward_harness.node import NODE_IP
from steward_harness.object_stores import ObjectStore
from steward_harness.servers import http_get
from tests.conftest import Helm
from tests.e2e.conftest import BATCH_NAMESPACE, SYSTEM
from tests.support import models
from tests.support.batches import NAME, BatchRelease
from tests.support.waiting import wait_until

NAMESPACE = BATCH_NAMESPACE
BUCKET = "tumours"
CREDENTIALS = "object-store"
"""The Secret holding the store's credentials and endpoint, passed to each run as its environment."""
CHAPTER = 300.0
COPIES = 10
"""The test rows repeated: 1,430 rows a run, above the shadow stage's minimum of 1,000."""


@dataclass
class Batches:
    cluster: LocalCluster
    release: BatchRelease
    bucket: Any
    """The S3 bucket the runs read and write, as boto3 reaches it from the host."""
    rows: int


@pytest.fixture(scope="module")
def batches(local_cluster: LocalCluster, chart: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Batches]:
    """The story's world: bundles on a claim, the rows in an S3 store on the node's address, its credentials in a
    Secret."""
    store = ObjectStore(host=NODE_IP, directory=local_cluster.directory / "s3")
    store.start()
    try:
        versions = models.contenders(tmp_path_factory.mktemp("batch-bundles"), "v3")
        claim = local_cluster.share_bundles(NAMESPACE, {version: trained.path for version, trained in versions.items()})
        s3 = boto3.resource("s3", endpoint_url=store.endpoint, **_client(store.environment))
        bucket = s3.Bucket(BUCKET)
        bucket.create()
        rows = pd.concat([versions["v1"].x_test] * COPIES, ignore_index=True)
        buffer = io.BytesIO()
        rows.to_parquet(buffer)
        bucket.put_object(Key="customers.parquet", Body=buffer.getvalue())
        literals = [f"--from-literal={key}={value}" for key, value in store.environment.items()]
        local_cluster.kubectl.run("create", "secret", "generic", CREDENTIALS, "-n", NAMESPACE, *literals)
        location = {"credentialsSecret": CREDENTIALS}
        batch = {
            "input": {"uri": f"s3://{BUCKET}/customers.parquet", **location},
            "output": {"uri": f"s3://{BUCKET}/scores.parquet", **location},
            "chunkRows": 500,
        }
        release = BatchRelease(
            local_cluster.kubectl, NAMESPACE, {version: f"{claim}/{version}" for version in versions}, batch
        )
        yield Batches(local_cluster, release, bucket, len(rows))
    finally:
        local_cluster.kubectl.run("delete", "modeldeployment", NAME, "-n", NAMESPACE, "--ignore-not-found")
        store.stop(keep=True)  # its log stays with the cluster's, which go when every test passed


def _client(environment: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": environment["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": environment["AWS_SECRET_ACCESS_KEY"],
        "region_name": environment["AWS_DEFAULT_REGION"],
    }


def _read(bucket: Any, key: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(bucket.Object(key).get()["Body"].read()))


def _finished_pod(cluster: LocalCluster, job: str) -> dict[str, Any]:
    """The Job's pod once its container has terminated, as the node's kubelet reports it."""

    def terminated() -> dict[str, Any] | None:
        pods = cluster.kubectl.json("get", "pods", "-n", NAMESPACE, "-l", f"batch.kubernetes.io/job-name={job}")
        for pod in pods["items"]:
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                if (status.get("state") or {}).get("terminated"):
                    found: dict[str, Any] = pod
                    return found
        return None

    return wait_until(terminated, timeout=CHAPTER, interval=1)


def _stored_predictions(cluster: LocalCluster) -> float:
    """The prediction events the chart's monitor has stored, by its own count."""
    services = cluster.kubectl.json("get", "services", "-n", SYSTEM)["items"]
    (monitor,) = [service for service in services if service["metadata"]["name"].endswith("-monitor")]
    port = monitor["spec"]["ports"][0]["port"]
    status, text = http_get(f"http://{monitor['spec']['clusterIP']}:{port}/metrics")
    assert status == 200, text
    stored = 'steward_monitor_events_total{kind="prediction",result="stored"} '
    return sum(float(line.removeprefix(stored)) for line in text.splitlines() if line.startswith(stored))


def test_v1_scores_rows_from_and_to_s3_in_a_pod_on_the_node(batches: Batches) -> None:
    release, cluster = batches.release, batches.cluster
    release.apply("v1")
    release.until("Stable", "v1", CHAPTER)
    stored = _stored_predictions(cluster)
    job = release.run_now("v1")
    assert job is not None
    pod = _finished_pod(cluster, job)
    container = pod["status"]["containerStatuses"][0]
    assert container["state"]["terminated"]["exitCode"] == 0, container
    # Kubernetes' Job controller made the pod, the node ran it from the predictor's image, the bundle came from the
    # claim, mounted read-only, and the credentials from the Secret.
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert pod["spec"]["nodeName"] == node.NAME
    spec = pod["spec"]["containers"][0]
    assert spec["image"] == images.image_references()["predictor"]
    assert [
        volume["persistentVolumeClaim"]["claimName"]
        for volume in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in volume
    ] == ["bundles"]
    assert all(mount["readOnly"] for mount in spec["volumeMounts"] if mount["mountPath"].startswith("/mnt/bundles"))
    assert spec["envFrom"] == [{"secretRef": {"name": CREDENTIALS}}]
    scores = _read(batches.bucket, "scores.parquet")
    assert len(scores) == batches.rows
    assert set(scores["model_version"]) == {"v1"}
    # Every row went to the chart's monitor, under its request id, before the run ended: by the run's own summary,
    # which the kubelet kept as its termination message, and by the monitor's count.
    summary = json.loads(container["state"]["terminated"]["message"])
    assert summary["reported"] == {"sent": batches.rows, "refused": 0, "dropped": 0, "unsent": 0}, summary
    assert _stored_predictions(cluster) - stored == batches.rows


def test_v2_is_validated_and_shadowed_on_its_runs_and_promoted_with_no_command(batches: Batches) -> None:
    release, cluster = batches.release, batches.cluster
    release.apply("v2")
    promoted = release.until("Promoted", "v2", CHAPTER)
    assert promoted["lastAnalysis"]["decision"] == "promote", promoted["lastAnalysis"]
    metrics = {row["metric"]: row for row in promoted["lastAnalysis"]["evidence"]}
    assert metrics["disagreement"]["verdict"] == "pass", metrics
    # What the operator read: the termination message the node's kubelet kept of each run of v2.
    job = f"{NAME}-run-{release.runs}"
    message = json.loads(
        _finished_pod(cluster, job)["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    )
    comparison = message["comparison"]
    assert (comparison["incumbent"]["version"], comparison["challenger"]["version"]) == ("v1", "v2")
    assert comparison["challenger"]["rows"] == batches.rows
    print(f"\n{job}: {comparison['pairs']:,} pairs, {comparison['disagreements']:,} answered differently")
    # The shadow wrote beside the output, never into it.
    assert set(_read(batches.bucket, "scores.shadow-v2.parquet")["model_version"]) == {"v2"}
    assert set(_read(batches.bucket, "scores.parquet")["model_version"]) == {"v1"}


def test_a_v3_that_answers_otherwise_is_rolled_back_in_shadow(batches: Batches) -> None:
    release = batches.release
    release.apply("v3", validation=False)
    rolled = release.until("RolledBack", "v3", CHAPTER)
    assert rolled["incumbent"]["version"] == "v2"
    failing = {row["metric"] for row in rolled["lastAnalysis"]["evidence"] if row["verdict"] == "fail"}
    assert failing & {"disagreement", "predictionShift"}, rolled["lastAnalysis"]
    wait_until(
        lambda: (
            [
                job["metadata"]["name"]
                for job in batches.cluster.kubectl.json("get", "cronjobs", "-n", NAMESPACE)["items"]
            ]
            == [f"{NAME}--v2"]
        ),
        timeout=60,
    )
