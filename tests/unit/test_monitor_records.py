"""Parsing what is sent to the monitor: defaults, normalised times, and an error naming the field for anything
that cannot be stored."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from steward_monitor.records import (
    Outcome,
    Prediction,
    RecordError,
    cloud_event,
    outcome_table,
    outcomes,
    predictions,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_a_prediction_takes_defaults_for_what_is_not_sent() -> None:
    (found,) = predictions([{"model": "churn", "version": 7, "requestId": "r1", "prediction": 1}], NOW)
    assert found == Prediction("", "churn", "7", "r1", NOW, 1.0)
    assert found.key == ("", "churn", "7", "r1")


def test_times_are_read_with_their_zone_and_kept_in_utc() -> None:
    sent = {"model": "m", "version": "v", "requestId": "r", "prediction": "yes", "time": "2026-11-25T14:00:00+02:00"}
    (found,) = predictions({"predictions": [sent]}, NOW)
    assert found.time == NOW
    assert found.time.tzinfo == UTC
    (later,) = outcomes([{"model": "m", "requestId": "r", "label": True, "time": "2027-02-23T12:00:00Z"}], NOW)
    assert later == Outcome("", "m", "r", True, NOW + timedelta(days=90))
    assert later.time.tzinfo == UTC


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        ({"version": "v", "requestId": "r", "prediction": 1}, "predictions[0].model: required"),
        ({"model": "", "version": "v", "requestId": "r", "prediction": 1}, "predictions[0].model: expected text"),
        ({"model": "m" * 257, "version": "v", "requestId": "r", "prediction": 1}, "predictions[0].model: expected"),
        ({"model": "m", "version": "v", "requestId": "r"}, "predictions[0].prediction: required"),
        ({"model": "m", "version": "v", "requestId": "r", "prediction": float("nan")}, "predictions[0].prediction:"),
        ({"model": "m", "version": "v", "requestId": "r", "prediction": [1]}, "predictions[0].prediction:"),
        (
            {"model": "m", "version": "v", "requestId": "r", "prediction": 1, "variant": "canary"},
            "predictions[0].variant",
        ),
        ({"model": "m", "version": "v", "requestId": "r", "prediction": 1, "score": True}, "predictions[0].score"),
        ({"model": "m", "version": "v", "requestId": "r", "prediction": 1, "features": [1]}, "predictions[0].features"),
        (
            {"model": "m", "version": "v", "requestId": "r", "prediction": 1, "time": "2026-11-25T10:00:00"},
            "predictions[0].time: give a time zone",
        ),
        ("a string", "predictions[0]: expected an object"),
    ],
)
def test_a_prediction_that_cannot_be_stored_names_its_field(sent: object, error: str) -> None:
    with pytest.raises(RecordError) as raised:
        predictions([sent], NOW)
    assert str(raised.value).startswith(error)


def test_outcomes_take_the_model_and_namespace_given_for_all() -> None:
    (found,) = outcomes({"outcomes": [{"requestId": "r", "label": 3.5}]}, NOW, namespace="ml", model="price")
    assert found == Outcome("ml", "price", "r", 3.5, NOW)
    with pytest.raises(RecordError, match=r"^outcomes\[0\]\.model: required$"):
        outcomes([{"requestId": "r", "label": 1}], NOW)


def test_an_uploaded_table_is_read_row_by_row() -> None:
    frame = pd.DataFrame({"request_id": ["a", "b"], "label": [1, 0], "model": ["m", None]})
    found = outcome_table(frame.to_csv(index=False).encode(), "csv", NOW, namespace="", model="default")
    assert [(outcome.model, outcome.label) for outcome in found] == [("m", 1.0), ("default", 0.0)]
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    assert outcome_table(buffer.getvalue(), "parquet", NOW, namespace="", model="default") == found
    with pytest.raises(RecordError, match="not a readable parquet file"):
        outcome_table(b"request_id,label\na,1\n", "parquet", NOW, namespace="", model=None)


CE = {"ce-specversion": "1.0", "ce-id": "req-7", "ce-type": "org.kubeflow.serving.inference.response"}


def test_a_kserve_response_event_is_one_prediction_per_row() -> None:
    body = {"predictions": [1, 0], "probabilities": [[0.2, 0.8], [0.9, 0.1]], "classes": [0, 1]}
    found = cloud_event(CE | {"ce-namespace": "ml"}, body, NOW, namespace="", model="churn", version="v2")
    assert [(p.namespace, p.model, p.version, p.request_id, p.prediction, p.score) for p in found] == [
        ("ml", "churn", "v2", "req-7-0", 1.0, 0.8),
        ("ml", "churn", "v2", "req-7-1", 0.0, 0.1),
    ]


def test_a_v2_response_event_reads_the_predictions_output() -> None:
    body = {
        "outputs": [
            {"name": "predictions", "datatype": "BYTES", "shape": [1], "data": ["yes"]},
            {"name": "probability_no", "datatype": "FP64", "shape": [1], "data": [0.3]},
            {"name": "probability_yes", "datatype": "FP64", "shape": [1], "data": [0.7]},
        ]
    }
    (found,) = cloud_event(CE, body, NOW, namespace="ml", model="churn", version="v2")
    assert (found.request_id, found.prediction, found.score) == ("req-7", "yes", 0.7)


def test_a_request_event_carries_no_prediction_and_a_bad_event_is_named() -> None:
    request = CE | {"ce-type": "org.kubeflow.serving.inference.request"}
    assert cloud_event(request, {"instances": [[1, 2]]}, NOW, namespace="ml", model="churn", version="v2") == []
    with pytest.raises(RecordError, match="not a CloudEvent"):
        cloud_event({}, {}, NOW, namespace="ml", model="churn", version="v2")
    with pytest.raises(RecordError, match="name the version in the logger's URL"):
        cloud_event(CE, {"predictions": [1]}, NOW, namespace="ml", model="churn", version="")
    with pytest.raises(RecordError, match='"predictions" output'):
        cloud_event(CE, {"outputs": []}, NOW, namespace="ml", model="churn", version="v2")
