"""Drift on live traffic, end to end: real predictors count what they serve over their training bins, a real
Prometheus scrapes them, and the monitor judges every window. Of two streams at the same time, the one whose
features were shifted alerts; the one drawn like the training data raises nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steward_harness.monitors import Monitor
from steward_harness.predictors import Predictor
from steward_harness.prometheus import Prometheus
from steward_harness.servers import http_get
from tests.support import models
from tests.support.waiting import wait_until

WINDOW_SECONDS = 4


def test_a_shifted_stream_alerts_and_a_steady_one_raises_nothing(tmp_path: Path) -> None:
    trained = models.breast_cancer(tmp_path, "v1")
    population = pd.concat([trained.x_train, trained.x_test])
    shifted = population.assign(
        **{"mean radius": population["mean radius"] * 1.3, "mean texture": population["mean texture"] + 4}
    )
    # "lenient" gets the shifted stream too, but its ModelDeployment's thresholds (which the operator passes to
    # its predictors, and they publish) are far above what this shift reaches.
    # "hourly" gets the shifted stream as well, but its ModelDeployment's drift window is an hour: no window of its
    # own ends while the others are judged every 4 s.
    streams = {"steady": population, "drifted": shifted, "lenient": shifted, "hourly": shifted}
    settings = {
        "lenient": {"STEWARD_DRIFT_WARN": "4", "STEWARD_DRIFT_ALERT": "5"},
        "hourly": {"STEWARD_DRIFT_SECONDS": "3600"},
    }
    prometheus = Prometheus()
    predictors = {name: Predictor(str(trained.path), name=name, env=settings.get(name, {})).start() for name in streams}
    stop = threading.Event()
    try:
        for predictor in predictors.values():
            prometheus.add_target(predictor.url.removeprefix("http://"), namespace="clinic")
        prometheus.start()
        for predictor in predictors.values():
            prometheus.wait_scraped(predictor.url.removeprefix("http://"))

        def send(name: str, seed: int) -> None:
            rng = np.random.default_rng(seed)
            rows = streams[name]
            while not stop.is_set():
                sample = rows.iloc[rng.integers(0, len(rows), 25)]
                status, _, body = predictors[name].post(
                    f"/v1/models/{name}:predict", {"instances": models.records(sample)}
                )
                assert status == 200, body
                stop.wait(0.05)

        senders = [threading.Thread(target=send, args=(name, index), daemon=True) for index, name in enumerate(streams)]
        for thread in senders:
            thread.start()
        args = [f"--prometheus-url={prometheus.url}", f"--drift-window={WINDOW_SECONDS}"]
        with Monitor(f"sqlite:///{tmp_path / 'monitor.db'}", args=args) as monitor:

            def alerting() -> dict[str, Any] | None:
                """Each model's latest drift (None until its first window ends), once "drifted" alerts."""
                versions = {}
                for name in streams:
                    answer = json.loads(http_get(f"{monitor.url}/v1/drift?namespace=clinic&model={name}")[1])
                    versions[name] = answer["versions"].get("v1")
                drifted = versions["drifted"]
                return versions if drifted and "mean radius" in drifted["alerting"] else None

            found = wait_until(alerting, timeout=WINDOW_SECONDS * 8, interval=1)
            _, exposition = http_get(f"{monitor.url}/metrics")

            def judged_again() -> dict[str, Any] | None:
                again = alerting()
                return again if again and again["drifted"]["time"] > found["drifted"]["time"] else None

            later = wait_until(judged_again, timeout=WINDOW_SECONDS * 3, interval=1)
    finally:
        stop.set()
        for predictor in predictors.values():
            predictor.stop()
        prometheus.stop()
    _judged_by_their_own_settings(found, later, exposition)


def _judged_by_their_own_settings(found: dict[str, Any], later: dict[str, Any], exposition: str) -> None:
    drifted, steady, judged_leniently = found["drifted"], found["steady"], found["lenient"]
    # Not judged at all, though its stream drifted as much: its first window has not ended.
    assert found["hourly"] is None
    assert later["hourly"] is None
    assert judged_leniently["alerting"] == []
    assert judged_leniently["features"]["mean radius"]["level"] == "ok"
    assert judged_leniently["features"]["mean radius"]["psi"] > 0.25  # Drifted as much, judged by its own levels.
    assert {"mean radius", "mean texture"} <= set(drifted["alerting"])
    assert drifted["features"]["mean radius"]["level"] == "alert"
    assert drifted["features"]["mean radius"]["samples"] > 100
    assert steady["features"]["mean radius"]["samples"] > 100  # Judged on as much traffic, and found steady.
    assert steady["alerting"] == []
    assert all(feature["level"] != "alert" for feature in steady["features"].values())
    assert "steward_monitor_drift_up 1.0" in exposition
    radius = 'steward_monitor_drift_alerting{feature="mean radius",model="drifted",namespace="clinic",version="v1"} 1.0'
    assert radius in exposition
