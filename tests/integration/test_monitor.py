"""The monitor as it runs: a real steward-monitor process over a real SQLite file or PostgreSQL server, fed over
HTTP. Events sent again are not stored twice, predictions need their model's token and outcomes the outcome token,
a bad record is refused on its own and named while the rest of its request is stored, and a monitor killed
mid-stream loses nothing it acknowledged."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from steward_harness.monitors import Monitor
from steward_harness.predictors import Predictor
from steward_harness.servers import http_get
from steward_monitor.stores import METADATA, OUTCOMES, PREDICTIONS
from steward_predictor.prediction_log import Reporter
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
    made = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
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
            "time": made,
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


def _answer(stored: int, duplicates: int, *refusals: tuple[int, str]) -> dict[str, Any]:
    return {
        "stored": stored,
        "duplicates": duplicates,
        "refused": len(refusals),
        "refusals": [{"index": index, "error": error} for index, error in refusals],
    }


def _sent(monitor: Monitor, body: object, namespace: str = "ml", model: str = "churn") -> tuple[int, dict[str, Any]]:
    """Status and answer of predictions posted with the token of `model` in `namespace`."""
    status, _, text = monitor.post("/v1/predictions", body, monitor.authorization(namespace, model))
    return status, json.loads(text)


def test_an_event_sent_again_is_not_stored_twice(monitor: Monitor, store: str) -> None:
    assert _sent(monitor, {"predictions": _predictions(100)}) == (200, _answer(100, 0))
    assert _sent(monitor, _predictions(100)) == (200, _answer(0, 100))
    assert _sent(monitor, _predictions(100, start=50)) == (200, _answer(50, 50))
    # The same event twice in one request is one event.
    twice = _predictions(1, start=500) * 2
    assert _sent(monitor, twice) == (200, _answer(1, 1))
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
    assert json.loads(monitor.post("/v1/outcomes", labels, TOKEN)[2]) == _answer(1, 0)
    assert json.loads(monitor.post("/v1/outcomes", labels, TOKEN)[2]) == _answer(0, 1)
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
        assert (status, json.loads(body)) == (200, _answer(1_000, 0))
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
        answer = monitor.post("/v1/predictions", body, {"content-type": content_type, **monitor.authorization("", "m")})
    assert answer[0] == status
    assert json.loads(answer[2])["error"].startswith(error)
    assert _stored(store)["steward_predictions"] == 0


def test_a_monitor_killed_mid_stream_loses_nothing_it_acknowledged(monitor: Monitor, store: str) -> None:
    """Eight senders post batches while the monitor is killed with SIGKILL and restarted; each resends what got no
    answer. Every acknowledged event is kept, and nothing is stored twice."""
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    run = uuid.uuid4().hex[:6]

    def send(sender: int) -> None:
        batch = 0
        while not stop.is_set():
            model = f"model-{run}-{sender}"
            events = _predictions(50, start=batch * 50, model=model)
            while True:
                try:
                    status = monitor.post("/v1/predictions", events, monitor.authorization("ml", model))[0]
                except OSError:
                    status = 0  # Down, or cut off mid-answer.
                if status == 200:
                    break
                stop.wait(0.05)  # Send the same batch again.
            with lock:
                acknowledged.update(f"{event['model']}/{event['requestId']}" for event in events)
            batch += 1

    senders = [threading.Thread(target=send, args=(index,)) for index in range(8)]
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
    kept = [f"{model}/{request}" for model, request in _rows(store, PREDICTIONS.c.model, PREDICTIONS.c.request_id)]
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
        environment = {
            "STEWARD_MONITOR_URL": monitor.url,
            "STEWARD_NAMESPACE": "clinic",
            "STEWARD_MONITOR_TOKEN": monitor.predictor_token("clinic", "diagnosis"),
        }
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


def _rows(store: str, *columns: sa.ColumnElement[Any]) -> list[tuple[Any, ...]]:
    """The stored values of `columns`, read straight from the store."""
    engine = sa.create_engine(store)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.select(*columns))]
    finally:
        engine.dispose()


def _events(store: str) -> list[tuple[Any, ...]]:
    columns = PREDICTIONS.c
    return _rows(store, columns.namespace, columns.model, columns.version, columns.request_id)


def test_kserve_payload_logger_events_are_stored_once(tmp_path: Path) -> None:
    """What KServe's payload logger posts (binary-mode CloudEvents) when an InferenceService's logger.url points
    at a monitor started to take them: response events become predictions, request events are acknowledged and
    skipped."""
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
    with Monitor(store, args=["--accept-unauthenticated-events"]) as monitor:
        assert json.loads(monitor.post(url, response, headers)[2]) == _answer(1, 0)
        assert json.loads(monitor.post(url, response, headers)[2]) == _answer(0, 1)
        request = headers | {"ce-type": "org.kubeflow.serving.inference.request"}
        assert json.loads(monitor.post(url, {"instances": [{"age": 40}]}, request)[2])["ignored"]
        status, _, body = monitor.post(url, response, {"ce-id": "x"})
        assert (status, json.loads(body)["error"]) == (
            400,
            "not a CloudEvent: send ce-type and ce-id headers (binary content mode)",
        )
    assert _events(store) == [("ml", "churn", "v2", "0f9e")]


# --- one bad record costs only itself ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spoiler", "error"),
    [
        ({"requestId": "r" * 300}, "predictions[137].requestId: expected text of 1 to 256 characters, got 'rrrr"),
        # PostgreSQL stores no NUL in text: taken as it was, it failed the transaction every other event shared.
        ({"requestId": "request-\x00"}, "predictions[137].requestId: expected text without NUL characters"),
        ({"version": "v\ud800"}, "predictions[137].version: expected text without NUL characters or lone surrogates"),
        ({"prediction": 10**400}, "predictions[137].prediction: expected a class label or a finite number"),
    ],
    ids=["long request id", "nul", "lone surrogate", "huge number"],
)
def test_one_bad_event_never_costs_the_rest_of_its_batch(
    monitor: Monitor, store: str, spoiler: dict[str, Any], error: str
) -> None:
    """A client's request id of 300 characters (or worse) is one event refused, named in the answer; the other
    499 events of the batch, other clients' included, are stored."""
    events = _predictions(500)
    events[137] |= spoiler
    status, answer = _sent(monitor, events)
    assert status == 200, answer
    assert (answer["stored"], answer["duplicates"], answer["refused"]) == (499, 0, 1)
    ((refusal),) = answer["refusals"]
    assert refusal["index"] == 137
    assert refusal["error"].startswith(error)
    assert len(refusal["error"]) < 400  # The value is quoted back cut short.
    assert _stored(store)["steward_predictions"] == 499
    exposition = _get(f"{monitor.url}/metrics")
    assert 'steward_monitor_events_total{kind="prediction",result="rejected"} 1.0' in exposition
    assert 'steward_monitor_events_total{kind="prediction",result="stored"} 499.0' in exposition


def test_sql_in_any_field_is_stored_as_text(monitor: Monitor, store: str) -> None:
    sql = "x'); DROP TABLE steward_predictions; --"
    event = {
        "namespace": sql,
        "model": sql,
        "version": sql,
        "requestId": sql,
        "prediction": sql,
        "features": {sql: sql},
    }
    assert _sent(monitor, [event], namespace=sql, model=sql) == (200, _answer(1, 0))
    labels = [{"namespace": sql, "model": sql, "requestId": sql, "label": sql}]
    assert json.loads(monitor.post("/v1/outcomes", labels, TOKEN)[2]) == _answer(1, 0)
    query = urllib.parse.urlencode({"namespace": sql, "model": sql, "incumbent": sql, "challenger": sql})
    status, body = http_get(f"{monitor.url}/v1/pairs?{query}")
    assert (status, json.loads(body)["pairs"]) == (200, 1)
    engine = sa.create_engine(store)
    try:
        with engine.connect() as connection:
            row = connection.execute(sa.select(PREDICTIONS)).one()
    finally:
        engine.dispose()
    assert (row.namespace, row.model, row.version, row.request_id, json.loads(row.prediction)) == (sql,) * 5
    assert _stored(store) == {"steward_predictions": 1, "steward_outcomes": 1}


def _outcome_rows(count: int) -> pd.DataFrame:
    return pd.DataFrame({"request_id": [f"request-{index}" for index in range(count)], "label": ["yes"] * count})


@pytest.mark.parametrize("form", ["json", "csv", "parquet"])
def test_one_bad_outcome_never_costs_the_rest_of_its_upload(monitor: Monitor, store: str, form: str) -> None:
    frame = _outcome_rows(1_000)
    frame.loc[10, "request_id"] = "r" * 300
    frame.loc[20, "label"] = None
    headers = {**TOKEN}
    if form == "json":
        body: object = [{"requestId": row.request_id, "label": row.label} for row in frame.itertuples()]
    elif form == "csv":
        body, headers["content-type"] = frame.to_csv(index=False).encode(), "text/csv"
    else:
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        body, headers["content-type"] = buffer.getvalue(), "application/vnd.apache.parquet"
    status, _, text = monitor.post("/v1/outcomes?model=churn&namespace=ml", body, headers)
    answer = json.loads(text)
    assert (status, answer["stored"], answer["refused"]) == (200, 998, 2)
    first, second = answer["refusals"]
    where = "outcomes[{}]" if form == "json" else "row {}"
    assert first["index"] == 10
    assert first["error"].startswith(f"{where.format(10 if form == 'json' else 11)}.requestId: expected text")
    assert (second["index"], second["error"]) == (20, f"{where.format(20 if form == 'json' else 21)}.label: required")
    assert _stored(store)["steward_outcomes"] == 998


# --- who may write predictions ----------------------------------------------------------------------------------------


def test_predictions_need_the_token_of_their_own_model(monitor: Monitor, store: str) -> None:
    """A forged event sent first (no token, a made-up token, or the token of another model) is not stored, so the
    real event that follows is stored, not taken for a duplicate."""
    forged = _predictions(1)
    forged[0]["prediction"] = "forged"
    for headers in (
        {},
        {"Authorization": "Bearer ml/churn/" + "0" * 64},
        {"Authorization": f"Bearer {monitor.predictor_token('ml', 'churn')}x"},
        {"Authorization": "Bearer " + monitor.predictor_token("ml", "churn").replace("ml/churn", "ml/other")},
        {"Authorization": monitor.predictor_token("ml", "churn")},  # Not a bearer token.
    ):
        status, answer_headers, text = monitor.post("/v1/predictions", forged, headers)
        assert status == 401, (headers, text)
        assert answer_headers["WWW-Authenticate"] == 'Bearer realm="steward-monitor"'
        assert "Authorization: Bearer <namespace>/<model>/<digest>" in json.loads(text)["error"]
    # A valid token for another model: its records for this model are refused one by one.
    status, answer = _sent(monitor, forged, model="other")
    assert (status, answer["stored"], answer["refused"]) == (400, 0, 1)
    assert answer["error"] == "predictions[0]: the token is for model ml/other, not 'ml/churn'"
    mixed = _predictions(2, model="other") + _predictions(1)
    assert _sent(monitor, mixed, model="other")[1] == _answer(
        2, 0, (2, "predictions[2]: the token is for model ml/other, not 'ml/churn'")
    )
    # The real event is stored as what it is.
    assert _sent(monitor, _predictions(1)) == (200, _answer(1, 0))
    kept = _rows(store, PREDICTIONS.c.model, PREDICTIONS.c.prediction)
    assert sorted(kept) == [("churn", '"no"'), ("other", '"no"'), ("other", '"yes"')]


def test_without_an_ingest_key_predictions_are_refused(tmp_path: Path) -> None:
    with Monitor(f"sqlite:///{tmp_path / 'monitor.db'}", ingest_key=None) as monitor:
        status, _, body = monitor.post("/v1/predictions", _predictions(1), {"Authorization": "Bearer ml/churn/00"})
    assert status == 503
    assert "started without an ingest key (--ingest-key-file or STEWARD_MONITOR_INGEST_KEY_FILE" in body


def test_payload_logger_events_are_refused_unless_the_monitor_takes_them(tmp_path: Path) -> None:
    """CloudEvents carry no credentials: without --accept-unauthenticated-events, anyone could write any model's
    predictions through them."""
    headers = {"ce-specversion": "1.0", "ce-id": "0f9e", "ce-type": "org.kubeflow.serving.inference.response"}
    with Monitor(f"sqlite:///{tmp_path / 'monitor.db'}") as monitor:
        status, _, body = monitor.post("/v1/events?namespace=ml&model=churn&version=v2", {"predictions": [1]}, headers)
    assert status == 403
    assert "--accept-unauthenticated-events" in json.loads(body)["error"]
    assert _stored(f"sqlite:///{tmp_path / 'monitor.db'}")["steward_predictions"] == 0


# --- times ------------------------------------------------------------------------------------------------------------


def test_times_far_ahead_or_past_retention_are_refused_one_by_one(tmp_path: Path) -> None:
    """A year-9999 event would never expire; one older than the retention (180 days) would be purged at once. A
    clock a little ahead (up to 5 minutes) is taken."""
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    now = datetime.now(UTC)
    events = _predictions(4)
    events[0]["time"] = "9999-12-31T00:00:00Z"
    events[1]["time"] = (now + timedelta(minutes=4)).isoformat()
    events[2]["time"] = (now - timedelta(days=181)).isoformat()
    outcomes = [
        {"requestId": "a", "label": 1, "time": (now + timedelta(minutes=6)).isoformat()},
        {"requestId": "b", "label": 1, "time": (now - timedelta(days=179)).isoformat()},
    ]
    with Monitor(store) as monitor:
        status, answer = _sent(monitor, events)
        status_outcomes, _, text = monitor.post("/v1/outcomes?model=churn&namespace=ml", outcomes, TOKEN)
    assert (status, answer["stored"], answer.get("refused")) == (200, 2, 2), answer
    future, past = answer["refusals"]
    assert future["index"] == 0
    assert future["error"].startswith("predictions[0].time: 9999-12-31T00:00:00+00:00 is in the future: the monitor")
    assert "at most 300 s ahead of its clock" in future["error"]
    assert past["index"] == 2
    assert past["error"].endswith("is older than the retention of 180 days keeps")
    answer = json.loads(text)
    assert (status_outcomes, answer["stored"], answer["refused"]) == (200, 1, 1)
    assert answer["refusals"][0]["error"].startswith("outcomes[0].time: ")


def test_the_limits_are_the_monitors_flags(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    events = _predictions(3)
    events[0]["time"] = (now + timedelta(minutes=2)).isoformat()
    events[1]["time"] = (now - timedelta(days=31)).isoformat()
    args = ["--max-clock-skew=60", "--retention-days=30", "--max-records=3"]
    with Monitor(f"sqlite:///{tmp_path / 'monitor.db'}", args=args) as monitor:
        status, answer = _sent(monitor, events)
        too_many = _sent(monitor, _predictions(4))
    assert (status, answer["stored"], answer["refused"]) == (200, 1, 2)
    assert "at most 60 s ahead of its clock" in answer["refusals"][0]["error"]
    assert answer["refusals"][1]["error"].endswith("is older than the retention of 30 days keeps")
    assert too_many == (413, {"error": "predictions: 4 records; the monitor takes at most 3 a request: split them"})


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
            assert _sent(monitor, events[start : start + 500])[0] == 200

        def exported() -> str | None:
            text = _get(f"{monitor.url}/metrics")
            return text if 'steward_monitor_predictions{model="churn",namespace="ml",version="v2999"}' in text else None

        exposition = wait_until(exported)
        time.sleep(1)  # Several more refreshes.
        later = _get(f"{monitor.url}/metrics")
    versions = {
        line.split('version="', 1)[1].split('"', 1)[0] for line in exposition.splitlines() if "version=" in line
    }
    assert versions == {f"v{index}" for index in range(2_500, 3_000)}  # The 500 seen last.
    assert len(later.splitlines()) < 3 * 500 + 100  # Predictions and labelled predictions per version, and the rest.
    # Counted when they leave, not again at every refresh.
    for text in (exposition, later):
        assert 'steward_monitor_dropped_versions_total{gauges="quality"} 2500.0' in text
    assert _stored(store)["steward_predictions"] == 3_000


# --- the predictor's reporter -----------------------------------------------------------------------------------------


def test_the_reporter_keeps_the_good_events_of_a_batch_and_logs_the_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    with Monitor(store) as monitor:
        registry = CollectorRegistry()
        reporter = Reporter(
            monitor.url, model="churn", namespace="ml", token=monitor.predictor_token("ml", "churn"), registry=registry
        )
        ids = [f"request-{index}" for index in range(499)]
        ids.insert(42, "x" * 300)  # An x-request-id a client made up.
        with caplog.at_level(logging.ERROR, logger="steward.predictor"):
            for request_id in ids:
                reporter.report("v1", "incumbent", request_id, np.array(["yes"]), None)
            reporter.close(timeout=30)
        impostor = Reporter(
            monitor.url,
            model="churn",
            namespace="ml",
            token=monitor.predictor_token("ml", "other"),
            registry=(elsewhere := CollectorRegistry()),
        )
        impostor.report("v1", "incumbent", "forged", np.array(["no"]), None)
        impostor.close(timeout=30)
    assert registry.get_sample_value("steward_predictor_reported_events_total", {"result": "sent"}) == 499
    assert registry.get_sample_value("steward_predictor_reported_events_total", {"result": "refused"}) == 1
    assert elsewhere.get_sample_value("steward_predictor_reported_events_total", {"result": "refused"}) == 1
    assert _stored(store)["steward_predictions"] == 499
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "the monitor refused 1 of 500 prediction events: 'xxxxx" in logged
    assert "predictions[42].requestId: expected text of 1 to 256 characters" in logged
