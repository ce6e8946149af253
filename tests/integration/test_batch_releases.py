"""Batch releases that decide themselves, end to end with the real operator: each version's CronJob (made by the
operator; its Jobs by Kubernetes' own CronJob and Job controllers, or by `kubectl create job --from`, as a person
would start a run now), each Job's pod run as a local process by the batch plane, as a kubelet would, on real
bundles and real Parquet files. The challenger's runs score the same input with the incumbent's bundle too and
leave the comparison in their termination messages; no release here is ever promoted or rolled back by a command."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from steward_harness.batch_plane import BatchPlane
from steward_harness.controlplane import ControlPlane
from steward_harness.kubectl import Kubectl
from steward_harness.operators import Operator
from tests.support import models
from tests.support.deployments import steward_status
from tests.support.models import Trained

PREFIX = "bt-"
NAME = "tumours"
COPIES = 10
"""The test rows repeated: 1,140 rows a run, above the shadow stage's minimum of 1,000."""


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


class BatchRelease:
    """One batch ModelDeployment in its own namespace, released version by version from a Git-like manifest."""

    def __init__(self, kubectl: Kubectl, namespace: str, directory: Path, versions: dict[str, Trained]) -> None:
        self.kubectl, self.namespace, self.directory, self.versions = kubectl, namespace, directory, versions
        rows = pd.concat([versions["v1"].x_test] * COPIES, ignore_index=True)
        self.input = directory / "customers.parquet"
        rows.to_parquet(self.input)
        self.output = directory / "scores.parquet"
        self.runs = 0

    def manifest(
        self, version: str, *, validation: bool = True, digest: str | None = None, bundle: str | None = None
    ) -> dict[str, Any]:
        model: dict[str, Any] = {"version": version, "bundle": str(self.versions[bundle or version].path)}
        if digest:
            model["digest"] = digest
        return {
            "apiVersion": "steward.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": self.namespace},
            "spec": {
                "owner": {"team": "oncology", "contact": "#tumours", "runbook": "https://runbooks.example.com/t"},
                "model": model,
                "serving": {
                    "mode": "batch",
                    "batch": {
                        # Once a year: every run here is started by hand, as `kubectl create job --from` does.
                        "schedule": "0 0 1 1 *",
                        "input": {"uri": str(self.input)},
                        "output": {"uri": str(self.output)},
                        "chunkRows": 500,
                    },
                },
                "rollout": {
                    "validation": {"enabled": validation, "metric": "accuracy", "tolerance": 0.05},
                    "shadow": {"minRequests": 1_000, "minDuration": "0s"},
                    "guardrails": [
                        {"name": "errorRate", "tolerance": 0.01},
                        {"name": "predictionShift", "tolerance": 0.1},
                        {"name": "disagreement", "tolerance": 0.1},
                    ],
                    "maxDuration": "1h",
                },
            },
        }

    def apply(self, version: str, **options: Any) -> None:
        self.kubectl.run("apply", "--server-side", "-f", "-", stdin=json.dumps(self.manifest(version, **options)))

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = self.kubectl.json("get", "md", NAME, "-n", self.namespace).get("status", {})
        return found

    def run_now(self, version: str) -> None:
        """Start a run of `version`'s CronJob now, as a person would; none once the release has removed it."""
        self.runs += 1
        job, schedule = f"{NAME}-run-{self.runs}", f"cronjob/{NAME}--{version}"
        started = self.kubectl.run("create", "job", job, f"--from={schedule}", "-n", self.namespace, check=False)
        assert started.returncode == 0 or "NotFound" in started.stderr, started.stderr

    def until(self, phase: str, version: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until `version` reaches `phase` (Stable or Promoted: it serves; RolledBack: it was rolled back),
        starting a run of it whenever it is the challenger and none is under way."""
        deadline = time.monotonic() + timeout
        where = "rolledBack" if phase == "RolledBack" else "incumbent"
        while True:
            status = self.status()
            if status.get("phase") == phase and (status.get(where) or {}).get("version") == version:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{version} not {phase} within {timeout:.0f} s: {status}")
            if (status.get("challenger") or {}).get("version") == version and not self._running():
                self.run_now(version)
            time.sleep(1)

    def _running(self) -> bool:
        jobs = self.kubectl.json("get", "jobs", "-n", self.namespace).get("items", [])
        return not all(_finished(job) for job in jobs)


def _finished(job: dict[str, Any]) -> bool:
    conditions = job.get("status", {}).get("conditions", [])
    return any(c["type"] in {"Complete", "Failed"} and c["status"] == "True" for c in conditions)


def test_a_batch_release_is_promoted_on_its_runs_and_bad_ones_rolled_back_with_no_command(
    batched: Batched, versions: dict[str, Trained], tmp_path: Path
) -> None:
    kubectl = batched.kubectl
    namespace = f"{PREFIX}{uuid.uuid4().hex[:10]}"
    kubectl.run("create", "namespace", namespace)
    batched.plane.namespaces.add(namespace)
    release = BatchRelease(kubectl, namespace, tmp_path, versions)
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
    assert not release.output.exists() or set(pd.read_parquet(release.output)["model_version"]) <= {"v1", "v2"}
    assert any(path.name.startswith("scores.shadow-") for path in tmp_path.iterdir())
