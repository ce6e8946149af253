"""Batch releases that decide themselves, end to end with the real operator: each version's CronJob (made by the
operator; its Jobs by Kubernetes' own CronJob and Job controllers, or by `kubectl create job --from`, as a person
would start a run now), each Job's pod run as a local process by the batch plane, as a kubelet would, on real
bundles and real Parquet files. The challenger's runs score the same input with the incumbent's bundle too and
leave the comparison in their termination messages; no release here is ever promoted or rolled back by a command."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from steward_harness.batch_plane import BatchPlane
from steward_harness.controlplane import ControlPlane
from steward_harness.kubectl import Kubectl
from steward_harness.operators import Operator
from tests.support import models
from tests.support.batches import NAME, BatchRelease
from tests.support.deployments import steward_status
from tests.support.models import Trained

PREFIX = "bt-"
COPIES = 10
"""The test rows repeated: 1,430 rows a run, above the shadow stage's minimum of 1,000."""


@dataclass
class Batched:
    kubectl: Kubectl
    plane: BatchPlane
    operator: Operator


@pytest.fixture(scope="module")
def batched(control_plane: ControlPlane, cluster: Kubectl) -> Iterator[Batched]:
    plane = BatchPlane(control_plane.server, control_plane.ssl_context()).start()
    operator = Operator(control_plane.kubeconfig, [f"{PREFIX}*"], env={"STEWARD_RESYNC_SECONDS": "2"}).start()
    try:
        yield Batched(cluster, plane, operator)
    finally:
        operator.stop()
        plane.stop()
        print(f"\noperator log: {operator.log}\nruns: {[str(log) for log in plane.logs()]}")


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    return models.contenders(tmp_path_factory.mktemp("models"), "v3", "v4")


def _release(kubectl: Kubectl, namespace: str, versions: dict[str, Trained], directory: Path) -> BatchRelease:
    """The release, its bundles where they were saved, scoring the test rows from and to Parquet in `directory`."""
    source = directory / "customers.parquet"
    pd.concat([versions["v1"].x_test] * COPIES, ignore_index=True).to_parquet(source)
    bundles = {version: str(trained.path) for version, trained in versions.items()}
    batch = {"input": {"uri": str(source)}, "output": {"uri": str(directory / "scores.parquet")}, "chunkRows": 500}
    return BatchRelease(kubectl, namespace, bundles, batch)


def test_a_batch_release_is_promoted_on_its_runs_and_bad_ones_rolled_back_with_no_command(
    batched: Batched, versions: dict[str, Trained], tmp_path: Path
) -> None:
    kubectl = batched.kubectl
    namespace = f"{PREFIX}{uuid.uuid4().hex[:10]}"
    kubectl.run("create", "namespace", namespace)
    batched.plane.namespaces.add(namespace)
    release = _release(kubectl, namespace, versions, tmp_path)
    output = tmp_path / "scores.parquet"
    try:
        release.apply("v1")
        release.until("Stable", "v1")
        # v2: validated on both bundles' held-out results from its first run, shadowed on the runs after it.
        release.apply("v2")
        promoted = release.until("Promoted", "v2")
        shown_promoted = steward_status(kubectl, NAME, namespace)
        # A challenger trained on shuffled outcomes: validation sees it at once.
        release.apply("v3")
        invalid = release.until("RolledBack", "v3")
        # Another, released without validation: its shadow runs disagree with v2's answers.
        release.apply("v4", validation=False)
        disagreeing = release.until("RolledBack", "v4")
        shown_disagreeing = steward_status(kubectl, NAME, namespace)
        # v2's bundle, pinned to a digest it does not have: the run cannot even load it.
        release.apply("v5", validation=False, bundle="v2", digest="sha256:" + "0" * 64)
        refused = release.until("RolledBack", "v5")
        events = kubectl.json("get", "events", "-n", namespace).get("items", [])
    finally:
        batched.plane.namespaces.discard(namespace)
        kubectl.run("delete", "modeldeployment", NAME, "-n", namespace, check=False)
        kubectl.run("delete", "namespace", namespace, "--wait=false")

    for status in (promoted, invalid, disagreeing, refused):
        print(f"{status['lastAnalysis']['decision']}: {status['lastAnalysis']['rule']}")
    assert promoted["incumbent"]["version"] == "v2"
    assert promoted["lastAnalysis"]["decision"] == "promote", promoted["lastAnalysis"]
    metrics = {row["metric"]: row for row in promoted["lastAnalysis"]["evidence"]}
    assert {"errorRate", "predictionShift", "disagreement", "errorRateNonInferiority"} <= set(metrics)
    assert metrics["disagreement"]["verdict"] == "pass"
    assert "slowRequests" not in metrics  # a batch run times no row
    assert "promote" in shown_promoted.lower()

    assert invalid["rolledBack"]["version"] == "v3"
    assert invalid["incumbent"]["version"] == "v2"
    assert "accuracy" in invalid["lastAnalysis"]["rule"], invalid["lastAnalysis"]

    assert disagreeing["rolledBack"]["version"] == "v4"
    rows = {row["metric"]: row for row in disagreeing["lastAnalysis"]["evidence"]}
    failing = {metric for metric, row in rows.items() if row["verdict"] == "fail"}
    assert failing & {"disagreement", "predictionShift"}, disagreeing["lastAnalysis"]
    assert "disagreement" in shown_disagreeing

    assert refused["rolledBack"]["version"] == "v5"
    assert "could not load its bundle" in refused["lastAnalysis"]["rule"], refused["lastAnalysis"]
    assert "sha256:" + "0" * 64 in refused["lastAnalysis"]["rule"]
    reasons = [event.get("reason") for event in events]
    assert "RolledBack" in reasons
    assert "Promoted" in reasons
    # The incumbent's output was never written by a challenger: each wrote beside it.
    assert not output.exists() or set(pd.read_parquet(output)["model_version"]) <= {"v1", "v2"}
    assert any(path.name.startswith("scores.shadow-") for path in tmp_path.iterdir())
