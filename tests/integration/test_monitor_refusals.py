"""The monitor as it runs: a real steward-monitor process over a real SQLite file or PostgreSQL server, fed over HTTP. A
bad record is refused on its own and named while the rest of its request is stored: a malformed request is answered
with what is wrong, one bad event or outcome never costs the rest of its batch, SQL in any field is stored as text,
and times far ahead or past retention are refused one by one."""

from __future__ import annotations

import io
import json
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from steward_harness.monitors import Monitor
from steward_harness.servers import http_get
from steward_monitor.stores import PREDICTIONS
from tests.support.monitoring import TOKEN, expected_answer, get_text, predictions, send_predictions, stored_counts


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
    assert stored_counts(store)["steward_predictions"] == 0


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
    events = predictions(500)
    events[137] |= spoiler
    status, answer = send_predictions(monitor, events)
    assert status == 200, answer
    assert (answer["stored"], answer["duplicates"], answer["refused"]) == (499, 0, 1)
    ((refusal),) = answer["refusals"]
    assert refusal["index"] == 137
    assert refusal["error"].startswith(error)
    assert len(refusal["error"]) < 400  # The value is quoted back cut short.
    assert stored_counts(store)["steward_predictions"] == 499
    exposition = get_text(f"{monitor.url}/metrics")
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
    assert send_predictions(monitor, [event], namespace=sql, model=sql) == (200, expected_answer(1, 0))
    labels = [{"namespace": sql, "model": sql, "requestId": sql, "label": sql}]
    assert json.loads(monitor.post("/v1/outcomes", labels, TOKEN)[2]) == expected_answer(1, 0)
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
    assert stored_counts(store) == {"steward_predictions": 1, "steward_outcomes": 1}


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
    assert stored_counts(store)["steward_outcomes"] == 998


# --- times ------------------------------------------------------------------------------------------------------------


def test_times_far_ahead_or_past_retention_are_refused_one_by_one(tmp_path: Path) -> None:
    """A year-9999 event would never expire; one older than the retention (180 days) would be purged at once. A
    clock a little ahead (up to 5 minutes) is taken."""
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    now = datetime.now(UTC)
    events = predictions(4)
    events[0]["time"] = "9999-12-31T00:00:00Z"
    events[1]["time"] = (now + timedelta(minutes=4)).isoformat()
    events[2]["time"] = (now - timedelta(days=181)).isoformat()
    outcomes = [
        {"requestId": "a", "label": 1, "time": (now + timedelta(minutes=6)).isoformat()},
        {"requestId": "b", "label": 1, "time": (now - timedelta(days=179)).isoformat()},
    ]
    with Monitor(store) as monitor:
        status, answer = send_predictions(monitor, events)
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
    events = predictions(3)
    events[0]["time"] = (now + timedelta(minutes=2)).isoformat()
    events[1]["time"] = (now - timedelta(days=31)).isoformat()
    args = ["--max-clock-skew=60", "--retention-days=30", "--max-records=3"]
    with Monitor(f"sqlite:///{tmp_path / 'monitor.db'}", args=args) as monitor:
        status, answer = send_predictions(monitor, events)
        too_many = send_predictions(monitor, predictions(4))
    assert (status, answer["stored"], answer["refused"]) == (200, 1, 2)
    assert "at most 60 s ahead of its clock" in answer["refusals"][0]["error"]
    assert answer["refusals"][1]["error"].endswith("is older than the retention of 30 days keeps")
    assert too_many == (413, {"error": "predictions: 4 records; the monitor takes at most 3 a request: split them"})
