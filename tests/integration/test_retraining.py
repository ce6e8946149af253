"""Retraining, end to end: real predictors count what they serve, a real Prometheus scrapes them and the monitor,
the monitor judges drift, and the real operator starts the team's retraining Job when drift persists. Two
models serve at the same time: the one whose input was shifted gets a Job; the steady one gets none until
someone asks with `kubectl steward retrain`, and then only one at a time."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from steward_harness.controlplane import ControlPlane
from steward_harness.dataplane import DataPlane
from steward_harness.kubectl import Kubectl
from steward_harness.monitors import Monitor
from steward_harness.operators import Operator
from steward_harness.prometheus import Prometheus
from steward_harness.servers import http_get
from tests.support import models
from tests.support.waiting import wait_until

PREFIX = "rt-"
KUBECTL_STEWARD = Path(sys.executable).parent / "kubectl-steward"


def _manifest(namespace: str, name: str, bundle: Path) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "steward.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "owner": {"team": "ml", "contact": "ml@example.com", "runbook": "https://runbooks.example.com/triage"},
                "model": {"version": "v1", "bundle": str(bundle)},
                # The monitor's own window is an hour: this model's drift is judged over its own.
                "monitoring": {"drift": {"window": "4s"}},
                "retraining": {
                    "onDrift": True,
                    "cooldown": "1h",
                    "jobTemplate": {
                        "metadata": {"labels": {"team": "ml"}},
                        "spec": {
                            "template": {
                                "spec": {
                                    "restartPolicy": "Never",
                                    "containers": [{"name": "train", "image": "registry.example.com/train:1"}],
                                }
                            }
                        },
                    },
                },
            },
        }
    )


@pytest.fixture
def world(control_plane: ControlPlane, cluster: Kubectl, tmp_path: Path) -> Iterator[tuple[str, DataPlane, str]]:
    """An operator that reads drift from a Prometheus scraping real predictors, and a monitor judging each model's
    drift over its own spec.monitoring.drift.window (4 s here), which the operator passes to its predictors."""
    namespace = f"{PREFIX}{uuid.uuid4().hex[:10]}"
    cluster.run("create", "namespace", namespace)
    prometheus = Prometheus()
    prometheus.start()
    monitor = Monitor(f"sqlite:///{tmp_path / 'monitor.db'}", args=[f"--prometheus-url={prometheus.url}"])
    data_plane = DataPlane(control_plane.server, control_plane.ssl_context(), prefix=PREFIX, prometheus=prometheus)
    data_plane.predictor_namespaces.add(namespace)
    operator = Operator(control_plane.kubeconfig, [namespace], prometheus=prometheus.url)
    try:
        monitor.start()
        # The monitor's series carry the model's namespace themselves: its target gets no namespace label.
        prometheus.add_target(monitor.url.removeprefix("http://"))
        data_plane.start()
        # As the chart runs it: predictors report to the monitor with a token the operator derives from its key.
        operator.env.update(STEWARD_RESYNC_SECONDS="2", **monitor.reporting())
        operator.start()
        yield namespace, data_plane, monitor.url
    finally:
        operator.stop()
        data_plane.stop()
        monitor.stop()
        prometheus.stop()
        print(f"\noperator log: {operator.log}")


def _monitor_events(monitor: str) -> dict[str, float]:
    """The monitor's count of prediction records, by result (stored, duplicate, rejected)."""
    _, text = http_get(f"{monitor}/metrics")
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "steward_monitor_events_total" and sample.labels.get("kind") == "prediction"
    }


def _expire(cluster: Kubectl, namespace: str, job: str) -> None:
    """Give the running Job a one-second deadline, so the real Job controller fails it (no node runs its pod here;
    the end-to-end story runs one to completion), and wait for the operator to record the failure."""
    cluster.run("patch", "job", job, "-n", namespace, "--type=merge", "-p", '{"spec": {"activeDeadlineSeconds": 1}}')

    def finished() -> bool:
        runs = cluster.json("get", "modeldeployment", "drifted", "-n", namespace)["status"]["retrainings"]
        return bool(runs[-1]["outcome"] == "failed")

    wait_until(finished)
    runs = cluster.json("get", "modeldeployment", "drifted", "-n", namespace)["status"]["retrainings"]
    assert runs[-1]["finished"]
    events = cluster.json("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=drifted")["items"]
    assert "RetrainingFailed" in {event["reason"] for event in events}


def _retrain_on_request(cluster: Kubectl, namespace: str) -> None:
    """The steady model: retrained on request, one Job at a time."""
    options = ["--kubeconfig", str(cluster.kubeconfig), "-n", namespace]

    def steward(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KUBECTL_STEWARD), *args, *options], capture_output=True, text=True, timeout=60, check=False
        )

    first = steward("retrain", "steady")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "a retraining Job starts" in first.stdout
    (manual,) = _jobs(cluster, namespace, "steady")
    assert manual["metadata"]["labels"]["steward.dev/retraining"] == "manual"
    second = steward("retrain", "steady")
    assert second.returncode == 1
    assert "is still running; one runs at a time" in second.stderr
    history = steward("history", "steady")
    assert manual["metadata"]["name"] in history.stdout


def _report(cluster: Kubectl, namespace: str, monitor: str, output: Path) -> None:
    """The owner's report of the drifted model: its drift (from the monitor), its retraining, its history."""
    where = ["-n", namespace, "--kubeconfig", str(cluster.kubeconfig), "--monitor", monitor, "--output", str(output)]
    result = subprocess.run(
        [str(KUBECTL_STEWARD), "report", "drifted", *where],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert {path.name for path in output.iterdir()} == {"index.html", "history.png", "drift.png"}
    page = (output / "index.html").read_text()
    assert "mean radius" in page
    assert "drifted-retrain-" in page
    assert (output / "drift.png").read_bytes().startswith(b"\x89PNG")


def _jobs(cluster: Kubectl, namespace: str, model: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cluster.json("get", "jobs", "-n", namespace, "-l", f"steward.dev/model={model}")[
        "items"
    ]
    return found


def test_sustained_drift_starts_the_teams_job_and_a_steady_model_waits_for_a_request(
    world: tuple[str, DataPlane, str], cluster: Kubectl, tmp_path: Path
) -> None:
    namespace, data_plane, monitor = world
    trained = models.breast_cancer(tmp_path, "v1")
    population = pd.concat([trained.x_train, trained.x_test])
    streams = {
        "steady": population,
        "drifted": population.assign(**{"mean radius": population["mean radius"] * 1.3}),
    }
    for name in streams:
        cluster.run("apply", "--server-side", "-f", "-", stdin=_manifest(namespace, name, trained.path))
    for name in streams:
        wait_until(partial(data_plane.predictor, namespace, f"{name}--v1"), timeout=60)
    stop = threading.Event()

    def send(name: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            rows = streams[name].iloc[rng.integers(0, len(streams[name]), 25)]
            # Found anew each time, as a Service would: pinning the version's digest rolls its predictor once.
            predictor = data_plane.predictor(namespace, f"{name}--v1")
            with contextlib.suppress(OSError):
                if predictor is not None:
                    predictor.post(f"/v1/models/{name}:predict", {"instances": models.records(rows)})
            stop.wait(0.05)

    senders = [threading.Thread(target=send, args=(name, index), daemon=True) for index, name in enumerate(streams)]
    for thread in senders:
        thread.start()
    # The streams flow until the report is made: the monitor's drift is that of its last window (4 s here), and
    # without records in it the report has no drift to draw.
    try:
        (job,) = wait_until(lambda: _jobs(cluster, namespace, "drifted"), timeout=90, interval=1)
        assert _jobs(cluster, namespace, "steady") == []  # The same time, the same model, no drift: no Job.
        metadata = job["metadata"]
        assert metadata["labels"]["steward.dev/retraining"] == "drift"
        assert metadata["labels"]["team"] == "ml"
        assert "mean radius" in metadata["annotations"]["steward.dev/retrain-message"]
        (container,) = job["spec"]["template"]["spec"]["containers"]
        environment = {item["name"]: item["value"] for item in container["env"]}
        assert (environment["STEWARD_RETRAIN_REASON"], environment["STEWARD_MODEL"]) == ("drift", "drifted")
        status = cluster.json("get", "modeldeployment", "drifted", "-n", namespace)["status"]
        conditions = {item["type"]: item for item in status["conditions"]}
        assert conditions["Drifting"]["status"] == "True"
        assert "mean radius" in conditions["Drifting"]["message"]
        steady = cluster.json("get", "modeldeployment", "steady", "-n", namespace)["status"]
        assert {item["type"]: item["status"] for item in steady["conditions"]}["Drifting"] == "False"
        (run,) = status["retrainings"]
        assert (run["job"], run["reason"], run["outcome"]) == (metadata["name"], "drift", "running")
        events = cluster.json("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=drifted")[
            "items"
        ]
        assert "RetrainingStarted" in {event["reason"] for event in events}

        # Every answer was reported to the monitor under the predictors' own token, and taken.
        events = _monitor_events(monitor)
        assert events.get("stored", 0) > 0
        assert events.get("rejected", 0) == 0
        _report(cluster, namespace, monitor, tmp_path / "report")
    finally:
        stop.set()

    _expire(cluster, namespace, metadata["name"])

    _retrain_on_request(cluster, namespace)
