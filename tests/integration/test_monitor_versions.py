"""The monitor as it runs: a real steward-monitor process over a real SQLite file or PostgreSQL server, fed over HTTP.
Labels arriving months later give each version its quality as scikit-learn computes it, and thousands of versions
never grow /metrics beyond its cap."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from steward_harness.monitors import Monitor
from steward_harness.predictors import Predictor
from tests.support import models
from tests.support.monitoring import TOKEN, get_text, send_predictions, stored_counts
from tests.support.waiting import wait_until


def test_labels_arriving_months_later_give_each_version_its_quality(tmp_path: Path) -> None:
    """Two versions' real predictors score the same held-out rows; their answers go to the monitor as if made 120
    days ago, and the labels arrive 90 days after that (for 80 % of the rows). Each version's quality is then
    what scikit-learn computes on the labelled rows."""
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    trained = {"v1": models.breast_cancer(tmp_path, "v1", c=0.01), "v2": models.breast_cancer(tmp_path, "v2")}
    rows = trained["v1"].x_test
    truth = trained["v1"].y_test.to_numpy()
    made = datetime.now(UTC) - timedelta(days=120)
    labelled = int(len(rows) * 0.8)
    answers: dict[str, tuple[list[int], list[float]]] = {}
    for version, model in trained.items():
        with Predictor(str(model.path), name="diagnosis") as predictor:
            status, _, body = predictor.post("/v1/models/diagnosis:predict", {"instances": models.records(rows)})
        assert status == 200, body
        answer = json.loads(body)
        positive = answer["classes"].index(1)
        answers[version] = (answer["predictions"], [row[positive] for row in answer["probabilities"]])
    with Monitor(store, args=["--quality-interval=0.2", "--quality-window-days=365"]) as monitor:
        for version, (predicted, scores) in answers.items():
            events = [
                {
                    "model": "diagnosis",
                    "namespace": "clinic",
                    "version": version,
                    "requestId": f"row-{index}",
                    "prediction": predicted[index],
                    "score": scores[index],
                    "time": (made + timedelta(minutes=index)).isoformat(),
                }
                for index in range(len(rows))
            ]
            assert monitor.post("/v1/predictions", events, monitor.authorization("clinic", "diagnosis"))[0] == 200
        outcomes = [
            {
                "requestId": f"row-{index}",
                "label": int(truth[index]),
                "time": (made + timedelta(days=90, minutes=index)).isoformat(),
            }
            for index in range(labelled)
        ]
        assert monitor.post("/v1/outcomes?model=diagnosis&namespace=clinic", outcomes, TOKEN)[0] == 200
        quality = json.loads(get_text(f"{monitor.url}/v1/quality?model=diagnosis&namespace=clinic"))["versions"]
        # A cohort: the first 30 predictions, by when they were made.
        until = (made + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        cohort = json.loads(get_text(f"{monitor.url}/v1/quality?model=diagnosis&namespace=clinic&until={until}"))[
            "versions"
        ]

        def gauges() -> str | None:
            text = get_text(f"{monitor.url}/metrics")
            return text if 'steward_monitor_quality{metric="rocAuc"' in text else None

        exposition = wait_until(gauges)
    for version, (predicted, scores) in answers.items():
        found = quality[version]
        assert (found["kind"], found["predictions"], found["labelled"]) == ("classifier", len(rows), labelled)
        assert found["coverage"] == pytest.approx(0.8, abs=0.01)
        assert found["labelDelaySeconds"]["p50"] == pytest.approx(90 * 86_400)
        expected = {
            "accuracy": accuracy_score(truth[:labelled], predicted[:labelled]),
            "rocAuc": roc_auc_score(truth[:labelled], scores[:labelled]),
            "logLoss": log_loss(truth[:labelled], scores[:labelled]),
            "calibrationError": _calibration_error(truth[:labelled], np.array(scores[:labelled])),
        }
        assert found["metrics"] == pytest.approx(expected, rel=1e-9)
        gauge = f'steward_monitor_quality{{metric="rocAuc",model="diagnosis",namespace="clinic",version="{version}"}}'
        assert float(exposition.split(gauge, 1)[1].split()[0]) == pytest.approx(expected["rocAuc"])
    assert quality["v2"]["metrics"]["logLoss"] < quality["v1"]["metrics"]["logLoss"]
    assert (cohort["v1"]["predictions"], cohort["v1"]["labelled"]) == (30, 30)


def _calibration_error(truth: np.ndarray, scores: np.ndarray) -> float:
    """Expected calibration error over ten equal-width bins, computed independently of the monitor."""
    total = 0.0
    for low in np.linspace(0, 0.9, 10):
        members = (scores >= low) & ((scores < low + 0.1) if low < 0.85 else (scores <= 1))
        if members.any():
            total += members.mean() * abs(scores[members].mean() - truth[members].mean())
    return float(total)


# --- the series /metrics exports --------------------------------------------------------------------------------------


def test_thousands_of_versions_never_grow_metrics_beyond_the_cap(tmp_path: Path) -> None:
    """One token holder invents 3,000 versions: /metrics keeps the gauges of the 500 seen last (the default cap),
    counts the others as dropped, and the store keeps every event."""
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    now = datetime.now(UTC)
    events = [
        {
            "model": "churn",
            "namespace": "ml",
            "version": f"v{index}",
            "requestId": f"r{index}",
            "prediction": 1,
            "time": (now - timedelta(seconds=3_000 - index)).isoformat(),
        }
        for index in range(3_000)
    ]
    with Monitor(store, args=["--quality-interval=0.2"]) as monitor:
        for start in range(0, len(events), 500):
            assert send_predictions(monitor, events[start : start + 500])[0] == 200

        def exported() -> str | None:
            text = get_text(f"{monitor.url}/metrics")
            return text if 'steward_monitor_predictions{model="churn",namespace="ml",version="v2999"}' in text else None

        exposition = wait_until(exported)
        time.sleep(1)  # Several more refreshes.
        later = get_text(f"{monitor.url}/metrics")
    versions = {
        line.split('version="', 1)[1].split('"', 1)[0] for line in exposition.splitlines() if "version=" in line
    }
    assert versions == {f"v{index}" for index in range(2_500, 3_000)}  # The 500 seen last.
    assert len(later.splitlines()) < 3 * 500 + 100  # Predictions and labelled predictions per version, and the rest.
    # Counted when they leave, not again at every refresh.
    for text in (exposition, later):
        assert 'steward_monitor_dropped_versions_total{gauges="quality"} 2500.0' in text
    assert stored_counts(store)["steward_predictions"] == 3_000
