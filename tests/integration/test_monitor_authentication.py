"""The monitor as it runs: a real steward-monitor process over a real SQLite file or PostgreSQL server, fed over HTTP.
Outcomes need the outcome token and predictions the token of their own model, and KServe's payload logger events,
which carry no credentials, are refused unless the monitor was started to take them."""

from __future__ import annotations

import json
from pathlib import Path

from steward_harness.monitors import Monitor
from steward_monitor.stores import PREDICTIONS
from tests.support.monitoring import TOKEN, expected_answer, predictions, send_predictions, stored_counts, stored_rows


def test_outcomes_need_the_token(monitor: Monitor, store: str) -> None:
    labels = {"outcomes": [{"model": "churn", "namespace": "ml", "requestId": "request-1", "label": "yes"}]}
    status, headers, body = monitor.post("/v1/outcomes", labels)
    assert (status, headers.get("WWW-Authenticate")) == (401, 'Bearer realm="steward-monitor"')
    assert "Authorization: Bearer" in json.loads(body)["error"]
    assert monitor.post("/v1/outcomes", labels, {"Authorization": "Bearer guess"})[0] == 401
    assert json.loads(monitor.post("/v1/outcomes", labels, TOKEN)[2]) == expected_answer(1, 0)
    assert json.loads(monitor.post("/v1/outcomes", labels, TOKEN)[2]) == expected_answer(0, 1)
    assert stored_counts(store)["steward_outcomes"] == 1


def test_without_a_token_outcomes_are_refused(tmp_path: Path) -> None:
    with Monitor(f"sqlite:///{tmp_path / 'monitor.db'}", token=None) as monitor:
        status, _, body = monitor.post("/v1/outcomes", [{"model": "m", "requestId": "r", "label": 1}], TOKEN)
    assert status == 503
    assert "started without a token" in body


# --- who may write predictions ----------------------------------------------------------------------------------------


def test_predictions_need_the_token_of_their_own_model(monitor: Monitor, store: str) -> None:
    """A forged event sent first (no token, a made-up token, or the token of another model) is not stored, so the
    real event that follows is stored, not taken for a duplicate."""
    forged = predictions(1)
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
    status, answer = send_predictions(monitor, forged, model="other")
    assert (status, answer["stored"], answer["refused"]) == (400, 0, 1)
    assert answer["error"] == "predictions[0]: the token is for model ml/other, not 'ml/churn'"
    mixed = predictions(2, model="other") + predictions(1)
    assert send_predictions(monitor, mixed, model="other")[1] == expected_answer(
        2, 0, (2, "predictions[2]: the token is for model ml/other, not 'ml/churn'")
    )
    # The real event is stored as what it is.
    assert send_predictions(monitor, predictions(1)) == (200, expected_answer(1, 0))
    kept = stored_rows(store, PREDICTIONS.c.model, PREDICTIONS.c.prediction)
    assert sorted(kept) == [("churn", '"no"'), ("other", '"no"'), ("other", '"yes"')]


def test_without_an_ingest_key_predictions_are_refused(tmp_path: Path) -> None:
    with Monitor(f"sqlite:///{tmp_path / 'monitor.db'}", ingest_key=None) as monitor:
        status, _, body = monitor.post("/v1/predictions", predictions(1), {"Authorization": "Bearer ml/churn/00"})
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
    assert stored_counts(f"sqlite:///{tmp_path / 'monitor.db'}")["steward_predictions"] == 0
