"""Champion/challenger on matured outcomes, end to end: real predictors behind a gateway that follows the operator's
routes report every prediction to a real monitor, a client posts each request's outcome to the monitor only once
it is due (the label delay after the request), and the real operator decides on the monitor's matured outcomes and
a real Prometheus. A challenger as fast and as error-free as its incumbent but wrong far more often is rolled back
on the outcome guardrail; an equal one is promoted once credibly no worse; without outcomes the last canary step
holds and says what it waits for."""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from steward_harness.controlplane import ControlPlane
from steward_harness.dataplane import DataPlane
from steward_harness.gateways import Gateway
from steward_harness.kubectl import Kubectl
from steward_harness.monitors import Monitor
from steward_harness.operators import Operator
from steward_harness.prometheus import Prometheus
from tests.support import models
from tests.support.deployments import steward_status
from tests.support.monitoring import TOKEN
from tests.support.waiting import wait_until

PREFIX = "oc-"
NAME = "triage"
LABEL_DELAY = 3.0
IN_FLIGHT = 16


@dataclass
class World:
    kubectl: Kubectl
    monitor: Monitor
    data_plane: DataPlane
    gateway: Gateway


@pytest.fixture(scope="module")
def world(control_plane: ControlPlane, cluster: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("outcomes")
    prometheus = Prometheus()
    prometheus.start()
    monitor = Monitor(f"sqlite:///{directory / 'monitor.db'}").start()
    data_plane = DataPlane(control_plane.server, control_plane.ssl_context(), prefix=PREFIX, prometheus=prometheus)
    data_plane.start()
    operator = Operator(
        control_plane.kubeconfig,
        [f"{PREFIX}*"],
        prometheus=prometheus.url,
        env={
            "STEWARD_RESYNC_SECONDS": "2",
            **monitor.reporting(),
        },
    ).start()
    gateway = Gateway(data_plane, seed=11).start()
    try:
        yield World(cluster, monitor, data_plane, gateway)
    finally:
        gateway.stop()
        operator.stop()
        data_plane.stop()
        monitor.stop()
        prometheus.stop()
        print(f"\noperator log: {operator.log}")


@dataclass
class Labelled:
    """Requests at a steady rate, each with its own request id; its true outcome posted to the monitor once due.
    The rate holds however slowly requests are answered (up to `IN_FLIGHT` at once), so a loaded machine delays the
    verdict by its latency, not by a multiple of it."""

    url: str
    rows: list[dict[str, Any]]
    truth: list[int]
    monitor: Monitor
    namespace: str
    label: bool = True
    rate: float = 60.0
    answered: dict[str, int] = field(default_factory=dict)
    _due: list[tuple[float, str, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _senders: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(IN_FLIGHT, "labelled"))

    def start(self) -> Labelled:
        self._threads = [threading.Thread(target=target, daemon=True) for target in (self._pace, self._post_due)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=35)
        self._senders.shutdown(cancel_futures=True)

    def _pace(self) -> None:
        chooser = random.Random(0)  # noqa: S311 -- sampling rows, not secrets
        due = time.monotonic()
        while not self._stop.is_set():
            self._senders.submit(self._send, chooser.randrange(len(self.rows)))
            due += 1 / self.rate
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _send(self, index: int) -> None:
        if self._stop.is_set():
            return
        request_id = uuid.uuid4().hex
        body = json.dumps({"instances": [self.rows[index]]}).encode()
        request = urllib.request.Request(  # noqa: S310 -- the local gateway
            self.url,
            data=body,
            method="POST",
            headers={"content-type": "application/json", "x-request-id": request_id},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                version = response.headers.get("x-steward-model-version", "?")
        except (urllib.error.URLError, OSError):
            version = "unanswered"
        with self._lock:
            self.answered[version] = self.answered.get(version, 0) + 1
            if version != "unanswered":
                self._due.append((time.monotonic() + LABEL_DELAY, request_id, self.truth[index]))

    def _post_due(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            with self._lock:
                ready = [item for item in self._due if item[0] <= now]
                self._due = [item for item in self._due if item[0] > now]
            if not ready or not self.label:
                continue
            outcomes = [
                {"model": NAME, "namespace": self.namespace, "requestId": request_id, "label": label}
                for _, request_id, label in ready
            ]
            self.monitor.post("/v1/outcomes", {"outcomes": outcomes}, TOKEN)


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
                "canary": {"steps": [50], "minRequestsPerStep": 100, "minStepDuration": "5s"},
                "guardrails": [{"name": "errorRate", "tolerance": 0.02}, {"name": "outcome", "tolerance": 0.08}],
                "maxDuration": "10m",
            },
            "monitoring": {"outcome": {"metric": "accuracy", "labelDelay": f"{LABEL_DELAY:g}s", "minLabels": 100}},
        },
    }
    return yaml.safe_dump(manifest)


def _status(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = kubectl.json("get", "modeldeployment", NAME, "-n", namespace).get("status", {})
    return status


@contextlib.contextmanager
def _release(world: World, tmp_path: Path, challenger: models.Trained, label: bool) -> Iterator[tuple[str, Labelled]]:
    """v1 serving with labelled traffic flowing, and v2 applied: a canary of one 50 % step."""
    kubectl = world.kubectl
    namespace = f"{PREFIX}{uuid.uuid4().hex[:10]}"
    kubectl.run("create", "namespace", namespace)
    world.data_plane.predictor_namespaces.add(namespace)
    first = models.breast_cancer(tmp_path, "v1")
    kubectl.run("apply", "--server-side", "-f", "-", stdin=_manifest(namespace, "v1", first.path))
    url = f"{world.gateway.url}/{namespace}/{NAME}/v1/models/{NAME}:predict"
    rows = models.records(first.x_test)
    traffic = Labelled(url, rows, [int(value) for value in first.y_test], world.monitor, namespace, label=label)
    try:
        wait_until(lambda: _status(kubectl, namespace).get("phase") == "Stable", timeout=120)
        wait_until(lambda: (namespace, NAME) in world.data_plane.routes)
        traffic.start()
        kubectl.run("apply", "--server-side", "-f", "-", stdin=_manifest(namespace, "v2", challenger.path))
        yield namespace, traffic
    finally:
        traffic.stop()
        world.data_plane.predictor_namespaces.discard(namespace)
        kubectl.run("delete", "modeldeployment", NAME, "-n", namespace)
        kubectl.run("delete", "inferenceservices", "--all", "-n", namespace, "--wait=false")
        kubectl.run("delete", "namespace", namespace, "--wait=false")


def test_a_challenger_wrong_more_often_on_matured_outcomes_is_rolled_back(world: World, tmp_path: Path) -> None:
    # Trained on shuffled outcomes: as fast and as error-free as v1, and right about as often as a coin.
    wrong = models.breast_cancer(tmp_path / "wrong", "v2", shuffled=True)
    with _release(world, tmp_path, wrong, label=True) as (namespace, _):
        rolled = _reaches(world.kubectl, namespace, "RolledBack", timeout=300)
        shown = steward_status(world.kubectl, NAME, namespace)
    analysis = rolled["lastAnalysis"]
    assert analysis["rule"].startswith("guardrail outcome failed"), analysis
    assert "the challenger's accuracy is" in analysis["rule"]
    outcome = next(item for item in analysis["evidence"] if item["metric"] == "outcome")
    assert outcome["verdict"] == "fail"
    assert re.search(r"^  outcome .* fail$", shown, re.MULTILINE), shown
    # It failed on outcomes alone: its errors were never credibly worse.
    assert next(item for item in analysis["evidence"] if item["metric"] == "errorRate")["verdict"] != "fail"


def test_an_equal_challenger_is_promoted_once_credibly_no_worse_on_matured_outcomes(
    world: World, tmp_path: Path
) -> None:
    equal = models.breast_cancer(tmp_path / "equal", "v2")
    with _release(world, tmp_path, equal, label=True) as (namespace, _):
        promoted = _reaches(world.kubectl, namespace, "Promoted", timeout=420)
    outcome = next(item for item in promoted["lastAnalysis"]["evidence"] if item["metric"] == "outcome")
    assert promoted["lastAnalysis"]["decision"] == "promote", promoted["lastAnalysis"]
    assert outcome["verdict"] == "pass"
    assert outcome["challengerSamples"] >= 100


def test_without_outcomes_the_last_step_holds_and_says_what_it_waits_for(world: World, tmp_path: Path) -> None:
    equal = models.breast_cancer(tmp_path / "equal", "v2")
    with _release(world, tmp_path, equal, label=False) as (namespace, traffic):
        held = wait_until(lambda: _waiting(_status(world.kubectl, namespace)), timeout=240)
        time.sleep(5)
        still = _status(world.kubectl, namespace)
        assert traffic.answered.get("v2", 0) > 100
    assert held["lastAnalysis"]["decision"] == "hold"
    assert "the challenger has 0 of the 100 it needs" in held["lastAnalysis"]["rule"]
    assert (still["phase"], still["challenger"]["version"]) == ("Canary", "v2")


def _reaches(kubectl: Kubectl, namespace: str, phase: str, timeout: float) -> dict[str, Any]:
    """The status once in `phase`; on a timeout, the error shows each phase and rule the release went through, when,
    and its last status."""
    started = time.monotonic()
    seen: dict[str, Any] = {}
    steps: list[tuple[float, str | None, str | None]] = []

    def check() -> dict[str, Any] | None:
        seen.clear()
        seen.update(_status(kubectl, namespace))
        step = (seen.get("phase"), (seen.get("lastAnalysis") or {}).get("rule"))
        if not steps or steps[-1][1:] != step:
            steps.append((round(time.monotonic() - started, 1), *step))
        return dict(seen) if seen.get("phase") == phase else None

    try:
        return wait_until(check, timeout=timeout)
    except TimeoutError as error:
        went = "\n".join(f"  {at:6.1f} s  {reached}: {rule}" for at, reached, rule in steps)
        raise TimeoutError(f"{error}; {phase} not reached. The way:\n{went}\nLast: {json.dumps(seen)}") from None


def _waiting(status: dict[str, Any]) -> dict[str, Any] | None:
    """The status once its last analysis waits for matured outcomes."""
    analysis = status.get("lastAnalysis") or {}
    return status if "waits for matured outcomes" in analysis.get("rule", "") else None
