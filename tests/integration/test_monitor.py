"""The monitor as it runs: a real steward-monitor process over a real SQLite file or PostgreSQL server, fed over
HTTP. Events sent again are not stored twice, outcomes need the token, bad input is answered with what is
wrong, and a monitor killed mid-stream loses nothing it acknowledged."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from steward_harness.monitors import Monitor
from steward_harness.predictors import Predictor
from steward_harness.servers import http_get
from steward_monitor.stores import METADATA, OUTCOMES, PREDICTIONS
from tests.support import models
from tests.support.waiting import wait_until

TOKEN = {"Authorization": "Bearer outcome-token"}


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL of an empty store."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    url: str = request.getfixturevalue("postgres")
    engine = sa.create_engine(url)
    METADATA.drop_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def monitor(store: str) -> Iterator[Monitor]:
    process = Monitor(store).start()
    yield process
    process.stop()


def _predictions(count: int, start: int = 0, model: str = "churn") -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "namespace": "ml",
            "version": "v2",
            "variant": "shadow" if index % 2 else "incumbent",
            "requestId": f"request-{index}",
            "prediction": "yes" if index % 3 else "no",
            "score": (index % 10) / 10,
            "features": {"age": index, "plan": "basic"},
            "time": "2026-11-25T10:00:00Z",
        }
        for index in range(start, start + count)
    ]


def _stored(store: str) -> dict[str, int]:
    engine = sa.create_engine(store)
    try:
        with engine.connect() as connection:
            return {
                table.name: connection.scalar(sa.select(sa.func.count()).select_from(table)) or 0
                for table in (PREDICTIONS, OUTCOMES)
            }
    finally:
        engine.dispose()


def test_an_event_sent_again_is_not_stored_twice(monitor: Monitor, store: str) -> None:
    assert monitor.post("/v1/predictions", {"predictions": _predictions(100)})[::2] == (
        200,
        '{"stored": 100, "duplicates": 0}',
    )
    assert json.loads(monitor.post("/v1/predictions", _predictions(100))[2]) == {"stored": 0, "duplicates": 100}
    assert json.loads(monitor.post("/v1/predictions", _predictions(100, start=50))[2]) == {
        "stored": 50,
        "duplicates": 50,
    }
    # The same event twice in one request is one event.
    twice = _predictions(1, start=500) * 2
    assert json.loads(monitor.post("/v1/predictions", twice)[2]) == {"stored": 1, "duplicates": 1}
    assert _stored(store) == {"steward_predictions": 151, "steward_outcomes": 0}
    metrics = monitor.post("/metrics", b"")[0]
    assert metrics == 405  # /metrics is GET only
    exposition = _get(f"{monitor.url}/metrics")
    assert 'steward_monitor_events_total{kind="prediction",result="stored"} 151.0' in exposition
    assert 'steward_monitor_events_total{kind="prediction",result="duplicate"} 151.0' in exposition
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_outcomes_need_the_token(monitor: Monitor, store: str) -> None:
    labels = {"outcomes": [{"model": "churn", "namespace": "ml", "requestId": "request-1", "label": "yes"}]}
    status, headers, body = monitor.post("/v1/outcomes", labels)
    assert (status, headers.get("WWW-Authenticate")) == (401, 'Bearer realm="steward-monitor"')
    assert "Authorization: Bearer" in json.loads(body)["error"]
    assert monitor.post("/v1/outcomes", labels, {"Authorization": "Bearer guess"})[0] == 401
    assert json.loads(monitor.post("/v1/outcomes", labels, TOKEN)[2]) == {"stored": 1, "duplicates": 0}
    assert json.loads(monitor.post("/v1/outcomes", labels, TOKEN)[2]) == {"stored": 0, "duplicates": 1}
    assert _stored(store)["steward_outcomes"] == 1


def test_without_a_token_outcomes_are_refused(tmp_path: Path) -> None:
    with Monitor(f"sqlite:///{tmp_path / 'monitor.db'}", token=None) as monitor:
        status, _, body = monitor.post("/v1/outcomes", [{"model": "m", "requestId": "r", "label": 1}], TOKEN)
    assert status == 503
    assert "started without a token" in body


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_outcomes_upload_in_bulk(tmp_path: Path, form: str) -> None:
    frame = pd.DataFrame({"request_id": [f"request-{index}" for index in range(1_000)], "label": [0, 1] * 500})
    buffer = io.BytesIO()
    if form == "csv":
        frame.to_csv(buffer, index=False)
        kind = "text/csv"
    else:
        frame.to_parquet(buffer)
        kind = "application/vnd.apache.parquet"
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    with Monitor(store) as monitor:
        status, _, body = monitor.post(
            "/v1/outcomes?model=churn&namespace=ml", buffer.getvalue(), {**TOKEN, "content-type": kind}
        )
        assert (status, json.loads(body)) == (200, {"stored": 1_000, "duplicates": 0})
        unlabelled = pd.DataFrame({"request_id": ["a"]}).to_csv(index=False).encode()
        status, _, body = monitor.post("/v1/outcomes?model=churn", unlabelled, {**TOKEN, "content-type": "text/csv"})
        assert (status, json.loads(body)["error"]) == (400, "the upload has no column label; columns: request_id")
        nameless = frame.head(1).to_csv(index=False).encode()
        status, _, body = monitor.post("/v1/outcomes", nameless, {**TOKEN, "content-type": "text/csv"})
        assert (status, json.loads(body)["error"]) == (400, "row 1.model: required")
    assert _stored(store)["steward_outcomes"] == 1_000


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error"),
    [
        (b"[]", "text/plain", 415, "send application/json, not text/plain"),
        (b"{not json", "application/json", 400, "the body is not JSON"),
        (b"{}", "application/json", 400, 'expected a JSON list, or an object with "predictions"'),
        (b"[]", "application/json", 400, "predictions: the list is empty"),
        (
            b'[{"model": "m", "version": "v1", "prediction": 1}]',
            "application/json",
            400,
            "predictions[0].requestId: required",
        ),
        (
            b'[{"model": "m", "version": "v1", "requestId": "r", "prediction": 1, "score": 2}]',
            "application/json",
            400,
            "predictions[0].score: expected a probability between 0 and 1, got 2",
        ),
        (
            b'[{"model": "m", "version": "v1", "requestId": "r", "prediction": 1, "time": "yesterday"}]',
            "application/json",
            400,
            "predictions[0].time: expected an RFC 3339 time, got 'yesterday'",
        ),
    ],
    ids=["not json type", "not json", "no list", "empty", "no request id", "bad score", "bad time"],
)
def test_a_bad_request_is_answered_with_what_is_wrong(
    tmp_path: Path, body: bytes, content_type: str, status: int, error: str
) -> None:
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    with Monitor(store) as monitor:
        answer = monitor.post("/v1/predictions", body, {"content-type": content_type})
    assert answer[0] == status
    assert json.loads(answer[2])["error"].startswith(error)
    assert _stored(store)["steward_predictions"] == 0


def test_a_monitor_killed_mid_stream_loses_nothing_it_acknowledged(monitor: Monitor, store: str) -> None:
    """Senders post batches while the monitor is killed with SIGKILL and restarted; each resends what got no
    answer. Every acknowledged event is kept, and nothing is stored twice."""
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    run = uuid.uuid4().hex[:6]

    def send(sender: int) -> None:
        batch = 0
        while not stop.is_set():
            events = _predictions(50, start=batch * 50, model=f"model-{run}-{sender}")
            while True:
                try:
                    status = monitor.post("/v1/predictions", events)[0]
                except OSError:
                    status = 0  # Down, or cut off mid-answer.
                if status == 200:
                    break
                stop.wait(0.05)  # Send the same batch again.
            with lock:
                acknowledged.update(f"{event['model']}/{event['requestId']}" for event in events)
            batch += 1

    senders = [threading.Thread(target=send, args=(index,)) for index in range(4)]
    for thread in senders:
        thread.start()
    try:
        while len(acknowledged) < 2_000:
            stop.wait(0.05)
        monitor.kill()
        with lock:
            before = set(acknowledged)
        monitor.start()
        while len(acknowledged) < len(before) + 2_000:
            stop.wait(0.05)
    finally:
        stop.set()
        for thread in senders:
            thread.join(timeout=60)
    engine = sa.create_engine(store)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(PREDICTIONS.c.model, PREDICTIONS.c.request_id)).all()
    finally:
        engine.dispose()
    kept = [f"{model}/{request}" for model, request in rows]
    assert len(kept) == len(set(kept))
    assert before <= set(kept), f"{len(before - set(kept))} acknowledged events were lost"
    assert acknowledged <= set(kept)


def _get(url: str) -> str:
    status, body = http_get(url)
    assert status == 200
    return body


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
            assert monitor.post("/v1/predictions", events)[0] == 200
        outcomes = [
            {
                "requestId": f"row-{index}",
                "label": int(truth[index]),
                "time": (made + timedelta(days=90, minutes=index)).isoformat(),
            }
            for index in range(labelled)
        ]
        assert monitor.post("/v1/outcomes?model=diagnosis&namespace=clinic", outcomes, TOKEN)[0] == 200
        quality = json.loads(_get(f"{monitor.url}/v1/quality?model=diagnosis&namespace=clinic"))["versions"]
        # A cohort: the first 30 predictions, by when they were made.
        until = (made + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        cohort = json.loads(_get(f"{monitor.url}/v1/quality?model=diagnosis&namespace=clinic&until={until}"))[
            "versions"
        ]

        def gauges() -> str | None:
            text = _get(f"{monitor.url}/metrics")
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


def test_predictors_report_every_prediction_through_a_monitor_outage(tmp_path: Path) -> None:
    """Two versions' predictors answer the same requests (as a gateway and its mirror would send them, with one
    request id); each reports its answers to the monitor, which therefore holds them in pairs. While the monitor
    is down the predictors answer as fast as ever, and what they could not report arrives once it is back."""
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    trained = {version: models.breast_cancer(tmp_path, version) for version in ("v1", "v2")}
    rows = models.records(trained["v1"].x_test)
    with Monitor(store) as monitor:
        environment = {"STEWARD_MONITOR_URL": monitor.url, "STEWARD_NAMESPACE": "clinic"}
        predictors = {
            version: Predictor(str(model.path), name="diagnosis", env=environment).start()
            for version, model in trained.items()
        }
        try:
            for index in range(50):
                for predictor in predictors.values():
                    status, _, _ = predictor.post(
                        "/v1/models/diagnosis:predict", {"instances": [rows[index]]}, {"x-request-id": f"r{index}"}
                    )
                    assert status == 200
            monitor.kill()
            for index in range(50, 80):
                began = time.monotonic()
                status, _, _ = predictors["v1"].post(
                    "/v1/models/diagnosis:predict", {"instances": [rows[index]]}, {"x-request-id": f"r{index}"}
                )
                assert status == 200
                assert time.monotonic() - began < 1.0  # Serving never waits for the monitor.
            status, _, _ = predictors["v1"].post(
                "/v1/models/diagnosis:predict", {"instances": rows[80:83]}, {"x-request-id": "several"}
            )
            assert status == 200
            monitor.start()
            reported = wait_until(lambda: _events(store) if len(_events(store)) == 50 + 30 + 3 + 50 else None, 60)
            sent = _get(f"{predictors['v1'].url}/metrics")
            pairs = json.loads(
                _get(f"{monitor.url}/v1/pairs?namespace=clinic&model=diagnosis&incumbent=v1&challenger=v2")
            )
        finally:
            for predictor in predictors.values():
                predictor.stop()
    by_version: dict[str, set[str]] = {}
    for namespace, model, version, request_id in reported:
        assert (namespace, model) == ("clinic", "diagnosis")
        by_version.setdefault(version, set()).add(request_id)
    assert by_version["v2"] == {f"r{index}" for index in range(50)}
    assert by_version["v1"] == {f"r{index}" for index in range(80)} | {"several-0", "several-1", "several-2"}
    assert len(by_version["v1"] & by_version["v2"]) == 50  # The pairs a shadow comparison reads.
    assert 'steward_predictor_reported_events_total{result="sent"} 83.0' in sent
    # The two versions were trained alike: on every request they both answered, they agree exactly.
    assert (pairs["pairs"], pairs["agreement"], pairs["meanScoreDifference"]) == (50, 1.0, 0.0)


def _calibration_error(truth: np.ndarray, scores: np.ndarray) -> float:
    """Expected calibration error over ten equal-width bins, computed independently of the monitor."""
    total = 0.0
    for low in np.linspace(0, 0.9, 10):
        members = (scores >= low) & ((scores < low + 0.1) if low < 0.85 else (scores <= 1))
        if members.any():
            total += members.mean() * abs(scores[members].mean() - truth[members].mean())
    return float(total)


def _events(store: str) -> list[tuple[str, str, str, str]]:
    engine = sa.create_engine(store)
    try:
        with engine.connect() as connection:
            columns = (PREDICTIONS.c.namespace, PREDICTIONS.c.model, PREDICTIONS.c.version, PREDICTIONS.c.request_id)
            return [tuple(row) for row in connection.execute(sa.select(*columns))]
    finally:
        engine.dispose()


def test_kserve_payload_logger_events_are_stored_once(tmp_path: Path) -> None:
    """What KServe's payload logger posts (binary-mode CloudEvents) when an InferenceService's logger.url points
    at the monitor: response events become predictions, request events are acknowledged and skipped."""
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "0f9e",
        "ce-source": "http://localhost:9081/",
        "ce-type": "org.kubeflow.serving.inference.response",
        "ce-inferenceservicename": "churn-v2",
        "ce-namespace": "ml",
    }
    response = {"predictions": ["yes"], "probabilities": [[0.25, 0.75]], "classes": ["no", "yes"]}
    url = "/v1/events?namespace=ml&model=churn&version=v2"
    with Monitor(store) as monitor:
        assert json.loads(monitor.post(url, response, headers)[2]) == {"stored": 1, "duplicates": 0}
        assert json.loads(monitor.post(url, response, headers)[2]) == {"stored": 0, "duplicates": 1}
        request = headers | {"ce-type": "org.kubeflow.serving.inference.request"}
        assert json.loads(monitor.post(url, {"instances": [{"age": 40}]}, request)[2])["ignored"]
        status, _, body = monitor.post(url, response, {"ce-id": "x"})
        assert (status, json.loads(body)["error"]) == (
            400,
            "not a CloudEvent: send ce-type and ce-id headers (binary content mode)",
        )
    assert _events(store) == [("ml", "churn", "v2", "0f9e")]
