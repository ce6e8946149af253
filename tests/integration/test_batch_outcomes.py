"""Batch releases judged on matured outcomes, end to end with the real operator and a real monitor: in shadow, the
incumbent's runs (its CronJob as the operator rewrote it, its Jobs made by Kubernetes' own controllers, its pods run
as local processes by the batch plane) score every row with the challenger's bundle too and report both versions'
answers to the monitor under the output's request ids; the team posts each row's outcome for the output, once it is
due; the operator promotes or rolls back on the monitor's pairs and outcomes, with no command."""

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
from steward_harness.monitors import Monitor
from steward_harness.operators import Operator
from tests.support import models
from tests.support.batches import NAME, BatchRelease
from tests.support.deployments import steward_status
from tests.support.models import Trained
from tests.support.monitoring import TOKEN
from tests.support.waiting import wait_until

PREFIX = "bo-"
COPIES = 10
"""The test rows repeated: 1,430 rows a run, above the shadow stage's minimum of 1,000."""
LABEL_DELAY = 3.0


@dataclass
class World:
    kubectl: Kubectl
    plane: BatchPlane
    monitor: Monitor


@pytest.fixture(scope="module")
def world(control_plane: ControlPlane, cluster: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("batch-outcomes")
    monitor = Monitor(f"sqlite:///{directory / 'monitor.db'}").start()
    plane = BatchPlane(control_plane.server, control_plane.ssl_context()).start()
    operator = Operator(
        control_plane.kubeconfig,
        [f"{PREFIX}*"],
        env={
            "STEWARD_RESYNC_SECONDS": "2",
            **monitor.reporting(),
        },
    ).start()
    try:
        yield World(cluster, plane, monitor)
    finally:
        operator.stop()
        plane.stop()
        monitor.stop()
        print(f"\noperator log: {operator.log}\nruns: {[str(log) for log in plane.logs()]}")


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    return models.contenders(tmp_path_factory.mktemp("models"), "v3")


class Judged(BatchRelease):
    """The batch release, judged on outcomes: the challenger's answers paired with the incumbent's on the same
    rows, and both versions' accuracy on the rows whose outcome has matured."""

    def manifest(self, version: str, **options: Any) -> dict[str, Any]:
        manifest = super().manifest(version, validation=False, **options)
        spec = manifest["spec"]
        spec["rollout"]["guardrails"] = [
            {"name": "errorRate", "tolerance": 0.01},
            {"name": "pairedAccuracy", "tolerance": 0.05},
            {"name": "outcome", "tolerance": 0.08},
        ]
        spec["monitoring"] = {"outcome": {"metric": "accuracy", "labelDelay": f"{LABEL_DELAY:g}s", "minLabels": 100}}
        return manifest

    def run(self, version: str, timeout: float = 300) -> None:
        """Run `version`'s CronJob now, and wait for the Job to finish."""
        job = self.run_now(version)
        assert job is not None, f"{version} has no CronJob"

        def finished() -> str | None:
            conditions = self.kubectl.json("get", "job", job, "-n", self.namespace).get("status", {}).get("conditions")
            done = [item["type"] for item in conditions or [] if item["status"] == "True"]
            return next((kind for kind in done if kind in {"Complete", "Failed"}), None)

        assert wait_until(finished, timeout=timeout) == "Complete", job

    def shadowing(self, incumbent: str, timeout: float = 120) -> list[str]:
        """Wait until the incumbent's CronJob scores the challenger beside itself; its command line."""

        def arguments() -> list[str] | None:
            job = self.kubectl.json("get", "cronjob", f"{NAME}--{incumbent}", "-n", self.namespace)
            (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
            found: list[str] = container["args"]
            return found if "--shadow" in found else None

        found: list[str] = wait_until(arguments, timeout=timeout)
        return found


def _label(world: World, namespace: str, scores: Path, truth: pd.Series) -> int:
    """Each row's outcome for the incumbent's output, posted under its request id as the team would."""
    output = pd.read_parquet(scores)
    outcomes = [
        {"model": NAME, "namespace": namespace, "requestId": request_id, "label": int(truth.iloc[row % len(truth)])}
        for request_id, row in zip(output["request_id"], output["row"], strict=True)
    ]
    status, _, body = world.monitor.post("/v1/outcomes", {"outcomes": outcomes}, TOKEN)
    assert status == 200, body
    return len(outcomes)


def _released(
    world: World, versions: dict[str, Trained], challenger: str, tmp_path: Path, phase: str
) -> dict[str, Any]:
    """v1 serving; `challenger` applied and shadowed by v1's run, whose output is labelled once due; the status once
    the release reaches `phase` (or the way it went, on a timeout)."""
    kubectl = world.kubectl
    namespace = f"{PREFIX}{uuid.uuid4().hex[:10]}"
    kubectl.run("create", "namespace", namespace)
    world.plane.namespaces.add(namespace)
    source = tmp_path / "customers.parquet"
    pd.concat([versions["v1"].x_test] * COPIES, ignore_index=True).to_parquet(source)
    bundles = {version: str(trained.path) for version, trained in versions.items()}
    batch = {"input": {"uri": str(source)}, "output": {"uri": str(tmp_path / "scores.parquet")}, "chunkRows": 500}
    release = Judged(kubectl, namespace, bundles, batch)
    try:
        release.apply("v1")
        release.until("Stable", "v1")
        release.apply(challenger)
        arguments = release.shadowing("v1")
        assert arguments[arguments.index("--shadow") + 1] == bundles[challenger]
        release.run("v1")
        release.run(challenger)
        time.sleep(LABEL_DELAY)
        labelled = _label(world, namespace, tmp_path / "scores.parquet", versions["v1"].y_test)
        assert labelled == COPIES * len(versions["v1"].x_test)
        where = "rolledBack" if phase == "RolledBack" else "incumbent"
        reached = wait_until(
            lambda: (
                (status := release.status()).get("phase") == phase
                and (status.get(where) or {}).get("version") == challenger
                and status
            ),
            timeout=300,
        )
        reached["shown"] = steward_status(kubectl, NAME, namespace)
        return dict(reached)
    except TimeoutError as error:
        raise TimeoutError(f"{error}; last status: {json.dumps(release.status())}") from None
    finally:
        world.plane.namespaces.discard(namespace)
        kubectl.run("delete", "modeldeployment", NAME, "-n", namespace, check=False)
        kubectl.run("delete", "namespace", namespace, "--wait=false")


def test_an_equal_batch_challenger_is_promoted_on_the_outcomes_of_the_incumbents_output(
    world: World, versions: dict[str, Trained], tmp_path: Path
) -> None:
    promoted = _released(world, versions, "v2", tmp_path, "Promoted")
    analysis = promoted["lastAnalysis"]
    assert analysis["decision"] == "promote", analysis
    rows = {row["metric"]: row for row in analysis["evidence"]}
    assert rows["outcome"]["verdict"] == rows["pairedAccuracy"]["verdict"] == "pass", rows
    assert rows["outcome"]["challengerSamples"] >= 100
    assert "outcome" in promoted["shown"]


def test_a_batch_challenger_wrong_more_often_on_matured_outcomes_is_rolled_back(
    world: World, versions: dict[str, Trained], tmp_path: Path
) -> None:
    rolled = _released(world, versions, "v3", tmp_path, "RolledBack")
    analysis = rolled["lastAnalysis"]
    failing = {row["metric"] for row in analysis["evidence"] if row["verdict"] == "fail"}
    assert failing & {"outcome", "pairedAccuracy"}, analysis
    assert "errorRate" not in failing
    assert rolled["incumbent"]["version"] == "v1"
