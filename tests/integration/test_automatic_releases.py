"""Releases decided on evidence, end to end: real predictors behind a gateway that follows the operator's routes,
a real Prometheus scraping them, and the real operator reading it. `make demo` plays the whole story (a good
version promoted, a bad one rolled back automatically); the tests here take a canary through a metrics outage
and through the operator's death."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from steward_harness.controlplane import ControlPlane
from steward_harness.dataplane import DataPlane
from steward_harness.demo import Traffic
from steward_harness.gateways import Gateway
from steward_harness.kubectl import Kubectl
from steward_harness.operators import Operator
from steward_harness.prometheus import Prometheus
from tests.conftest import REPOSITORY
from tests.support import models
from tests.support.waiting import PATIENCE, wait_until

PREFIX = "ev-"
NAME = "triage"


@dataclass
class Evidenced:
    """An operator that decides on evidence from a real Prometheus, and the data plane it watches."""

    kubectl: Kubectl
    prometheus: Prometheus
    data_plane: DataPlane
    operator: Operator
    gateway: Gateway


@pytest.fixture(scope="module")
def evidenced(control_plane: ControlPlane, cluster: Kubectl) -> Iterator[Evidenced]:
    prometheus = Prometheus()
    prometheus.start()
    data_plane = DataPlane(control_plane.server, control_plane.ssl_context(), prefix=PREFIX, prometheus=prometheus)
    data_plane.start()
    operator = Operator(
        control_plane.kubeconfig,
        [f"{PREFIX}*"],
        prometheus=prometheus.url,
        env={"STEWARD_RESYNC_SECONDS": "2"},
    ).start()
    gateway = Gateway(data_plane, seed=5).start()
    try:
        yield Evidenced(cluster, prometheus, data_plane, operator, gateway)
    finally:
        gateway.stop()
        operator.stop()
        data_plane.stop()
        prometheus.stop()
        print(f"\noperator log: {operator.log}")


@dataclass
class Release:
    """v1 serving with traffic flowing, and v2 applied: a canary of one 50 % step, decided on evidence."""

    namespace: str
    traffic: Traffic

    def status(self, kubectl: Kubectl) -> dict[str, Any]:
        body = kubectl.json("get", "modeldeployment", NAME, "-n", self.namespace)
        status: dict[str, Any] = body.get("status", {})
        return status


def _manifest(namespace: str, version: str, bundle: Path) -> str:
    manifest = {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "owner": {"team": "ml", "contact": "ml@example.com", "runbook": "https://runbooks.example.com/triage"},
            "model": {"version": version, "bundle": str(bundle)},
            "rollout": {
                "validation": {"enabled": False},
                "canary": {"steps": [50], "minRequestsPerStep": 200, "minStepDuration": "10s"},
                "guardrails": [{"name": "errorRate", "tolerance": 0.01}],
                "maxDuration": "10m",
            },
        },
    }
    return yaml.safe_dump(manifest)


@pytest.fixture
def canary(evidenced: Evidenced, tmp_path: Path) -> Iterator[Release]:
    """A release of v2 that has just reached its canary step, with 40 requests/s flowing."""
    kubectl = evidenced.kubectl
    namespace = f"{PREFIX}{uuid.uuid4().hex[:10]}"
    kubectl.run("create", "namespace", namespace)
    evidenced.data_plane.predictor_namespaces.add(namespace)
    first = models.breast_cancer(tmp_path, "v1")
    second = models.breast_cancer(tmp_path, "v2")
    kubectl.run("apply", "--server-side", "-f", "-", stdin=_manifest(namespace, "v1", first.path))
    url = f"{evidenced.gateway.url}/{namespace}/{NAME}/v1/models/{NAME}:predict"
    traffic = Traffic(url, models.records(first.x_test), rate=40)
    release = Release(namespace, traffic)
    try:
        wait_until(lambda: release.status(kubectl).get("phase") == "Stable", timeout=2 * PATIENCE)
        wait_until(lambda: (namespace, NAME) in evidenced.data_plane.routes)
        traffic.start()
        kubectl.run("apply", "--server-side", "-f", "-", stdin=_manifest(namespace, "v2", second.path))
        wait_until(lambda: _weights(release.status(kubectl)) == (50, 50, 0), timeout=2 * PATIENCE, interval=0.05)
        yield release
    finally:
        traffic.stop()
        evidenced.data_plane.predictor_namespaces.discard(namespace)
        # Without a garbage collector here the InferenceServices would outlive the namespace, and with them
        # their predictor processes; the operator is told to serve nothing more first.
        kubectl.run("delete", "modeldeployment", NAME, "-n", namespace)
        kubectl.run("delete", "inferenceservices", "--all", "-n", namespace, "--wait=false")
        kubectl.run("delete", "namespace", namespace, "--wait=false")


def _weights(status: dict[str, Any]) -> tuple[int, int, int]:
    weights = status.get("weights") or {}
    return weights.get("incumbent", 100), weights.get("challenger", 0), weights.get("shadow", 0)


def _promoted(release: Release, kubectl: Kubectl) -> dict[str, Any] | None:
    status = release.status(kubectl)
    promoted = status.get("phase") == "Promoted" and status.get("incumbent", {}).get("version") == "v2"
    return status if promoted else None


def _held(release: Release, kubectl: Kubectl, seconds: float) -> None:
    """The canary stays where it is, at 50/50, for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = release.status(kubectl)
        assert (status.get("phase"), _weights(status)) == ("Canary", (50, 50, 0)), json.dumps(status)
        time.sleep(0.5)


def test_a_metrics_outage_pauses_the_canary_until_prometheus_returns(evidenced: Evidenced, canary: Release) -> None:
    kubectl = evidenced.kubectl
    evidenced.prometheus.stop(keep=True)
    try:

        def paused() -> dict[str, Any] | None:
            status = canary.status(kubectl)
            analysis = status.get("lastAnalysis") or {}
            return status if analysis.get("decision") == "pause" and analysis.get("phase") == "Canary" else None

        status = wait_until(paused)
        assert status["lastAnalysis"]["rule"].startswith("metrics are unavailable")
        reconciling = next(item for item in status["conditions"] if item["type"] == "Reconciling")
        assert reconciling["status"] == "True"
        assert "automatic decisions wait: metrics are unavailable" in reconciling["message"]
        events = kubectl.json("get", "events", "-n", canary.namespace)["items"]
        assert [event["type"] for event in events if event["reason"] == "AnalysisPaused"] == ["Warning"]
        # Long past the step's minimum evidence (10 s, 200 requests): the outage neither promotes nor rolls back.
        _held(canary, kubectl, 25)
    finally:
        evidenced.prometheus.start()
    status = wait_until(lambda: _promoted(canary, kubectl), timeout=5 * PATIENCE)
    assert status["lastAnalysis"]["decision"] == "promote"
    assert "credibly not worse" in status["lastAnalysis"]["rule"]


def test_the_operator_killed_mid_canary_resumes_it(evidenced: Evidenced, canary: Release) -> None:
    kubectl = evidenced.kubectl
    evidenced.operator.kill()
    try:
        _held(canary, kubectl, 15)  # Without the operator nothing moves, though the evidence is there.
    finally:
        evidenced.operator.start()
    status = wait_until(lambda: _promoted(canary, kubectl), timeout=5 * PATIENCE)
    analysis = status["lastAnalysis"]
    assert analysis["decision"] == "promote"
    # The restarted operator judged the step on its evidence since the step began, not since it came back.
    elapsed = re.search(r"challenger requests in (?:(\d+)m)?(\d+)s\)", analysis["rule"])
    assert elapsed is not None, analysis["rule"]
    assert 60 * int(elapsed[1] or 0) + int(elapsed[2]) >= 15
    history = [(entry["version"], entry["outcome"]) for entry in status["history"]]
    assert history == [("v1", "replaced"), ("v2", "serving")]


def test_make_demo_tells_the_story_and_draws_it(tmp_path: Path) -> None:
    """`make demo` on this checkout: v2 promoted, v3 rolled back automatically, Git reverted to v2, a timeline
    table and a PNG, in under 10 minutes."""
    began = time.monotonic()
    result = subprocess.run(
        ["make", "--no-print-directory", "demo", f"DEMO_ARGS=--output {tmp_path}"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    taken = time.monotonic() - began
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert taken < 600
    picture = (tmp_path / "timeline.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(picture) > 20_000
    rows = [line.split("|")[1:-1] for line in (tmp_path / "timeline.md").read_text().splitlines()[2:]]
    states = [[cell.strip() for cell in row[1:5]] + [row[5].strip()] for row in rows if row[1].strip()]
    promoted = [state for state in states if state[:3] == ["Promoted", "v2", "-"]]
    assert promoted
    assert promoted[0][4].startswith("promote: ")
    rolled_back = [state for state in states if state[:3] == ["RolledBack, stalled", "v2", "-"]]
    assert rolled_back
    assert rolled_back[0][4].startswith("rollback: guardrail ")
    assert states[-1][:4] == ["RolledBack", "v2", "-", "100/0/0"]
    assert states[-1][4] == "v2 serves all traffic"
    assert "answers seen by clients" in result.stdout
    assert (tmp_path / "events.txt").read_text().count("RolledBack") >= 1
