"""The monitor as it runs: a real steward-monitor process over a real SQLite file or PostgreSQL server, fed over
HTTP. Events sent again are not stored twice, outcomes need the token, bad input is answered with what is
wrong, and a monitor killed mid-stream loses nothing it acknowledged."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from steward_harness.monitors import Monitor
from steward_harness.servers import http_get
from steward_monitor.stores import METADATA, OUTCOMES, PREDICTIONS

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
    exposition = _get(monitor, "/metrics")
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


def _get(monitor: Monitor, path: str) -> str:
    status, body = http_get(f"{monitor.url}{path}")
    assert status == 200
    return body
