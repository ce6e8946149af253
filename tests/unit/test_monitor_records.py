"""Parsing what is sent to the monitor: defaults, normalised times, each record admitted or refused on its own with
a reason naming the field, the times, sizes and models a sender may send, and uploaded tables measured before they
are decoded."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steward_monitor.records import (
    Admission,
    Outcome,
    Prediction,
    RecordError,
    Refusal,
    TooLargeError,
    cloud_event,
    outcome_table,
    outcomes,
    predictions,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
AT_NOW = Admission(NOW)


def _only(found: Any) -> Any:
    """The one record of a batch that refused nothing."""
    assert found.refusals == []
    (record,) = found.records
    return record


def _refusal(found: Any) -> str:
    """The reason of the one refusal of a batch that admitted nothing."""
    assert found.records == []
    (refusal,) = found.refusals
    return str(refusal.reason)


def test_a_prediction_takes_defaults_for_what_is_not_sent() -> None:
    found = _only(predictions([{"model": "churn", "version": 7, "requestId": "r1", "prediction": 1}], AT_NOW))
    assert found == Prediction("", "churn", "7", "r1", NOW, 1.0)
    assert found.key == ("", "churn", "7", "r1")


def test_times_are_read_with_their_zone_and_kept_in_utc() -> None:
    sent = {"model": "m", "version": "v", "requestId": "r", "prediction": "yes", "time": "2026-11-25T14:00:00+02:00"}
    found = _only(predictions({"predictions": [sent]}, AT_NOW))
    assert found.time == NOW
    assert found.time.tzinfo == UTC
    arrived = Admission(NOW + timedelta(days=90))
    later = _only(outcomes([{"model": "m", "requestId": "r", "label": True, "time": "2027-02-23T12:00:00Z"}], arrived))
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
    assert _refusal(predictions([sent], AT_NOW)).startswith(error)


GOOD = {"model": "m", "version": "v", "prediction": 1}


@pytest.mark.parametrize(
    ("spoiler", "error"),
    [
        ({"requestId": "r" * 300}, "predictions[1].requestId: expected text of 1 to 256 characters, got 'rrrr"),
        ({"requestId": "r\x00"}, "predictions[1].requestId: expected text without NUL characters"),
        ({"model": "\udc80"}, "predictions[1].model: expected text without NUL characters or lone surrogates"),
        ({"prediction": 10**400}, "predictions[1].prediction: expected a class label or a finite number"),
        ({"score": -(10**400)}, "predictions[1].score: expected a probability"),
        ({"time": "0001-01-01T00:00:00+14:00"}, "predictions[1].time: '0001-01-01T00:00:00+14:00' is out of range"),
    ],
    ids=["long", "nul", "surrogate", "huge number", "huge score", "time out of range"],
)
def test_one_bad_record_is_refused_alone_and_the_others_admitted(spoiler: dict[str, Any], error: str) -> None:
    sent = [{**GOOD, "requestId": f"r{index}"} for index in range(3)]
    sent[1] |= spoiler
    found = predictions(sent, AT_NOW)
    assert [record.request_id for record in found.records] == ["r0", "r2"]
    (refusal,) = found.refusals
    assert refusal.index == 1
    assert refusal.reason.startswith(error)
    assert len(refusal.reason) < 300  # What was sent is quoted back cut short.


def test_times_are_admitted_from_the_retention_to_a_little_ahead() -> None:
    admission = Admission(NOW, retention=timedelta(days=30), skew=timedelta(minutes=5))
    sent = [
        {**GOOD, "requestId": name, "time": (NOW + offset).isoformat()}
        for name, offset in (
            ("ahead", timedelta(minutes=5)),
            ("too far ahead", timedelta(minutes=5, seconds=1)),
            ("oldest kept", -timedelta(days=30)),
            ("too old", -timedelta(days=30, seconds=1)),
        )
    ]
    sent.append({**GOOD, "requestId": "year 9999", "time": "9999-12-31T23:59:59Z"})
    found = predictions(sent, admission)
    assert [record.request_id for record in found.records] == ["ahead", "oldest kept"]
    assert found.refusals == [
        Refusal(
            1,
            "predictions[1].time: 2026-11-25T12:05:01+00:00 is in the future: the monitor takes times at most 300 s "
            "ahead of its clock (2026-11-25T12:00:00+00:00)",
        ),
        Refusal(3, "predictions[3].time: 2026-10-26T11:59:59+00:00 is older than the retention of 30 days keeps"),
        Refusal(
            4,
            "predictions[4].time: 9999-12-31T23:59:59+00:00 is in the future: the monitor takes times at most 300 s "
            "ahead of its clock (2026-11-25T12:00:00+00:00)",
        ),
    ]
    late = outcomes([{"model": "m", "requestId": "r", "label": 1, "time": "9999-12-31T23:59:59Z"}], admission)
    assert _refusal(late).startswith("outcomes[0].time: 9999-12-31T23:59:59+00:00 is in the future")


def test_a_token_for_one_model_admits_that_models_predictions_only() -> None:
    admission = Admission(NOW, scope=("ml", "churn"))
    sent = [
        {**GOOD, "namespace": "ml", "model": "churn", "requestId": "mine"},
        {**GOOD, "namespace": "ml", "model": "fraud", "requestId": "another model"},
        {**GOOD, "namespace": "team-b", "model": "churn", "requestId": "another namespace"},
        {**GOOD, "model": "churn", "requestId": "no namespace"},
    ]
    found = predictions(sent, admission)
    assert [record.request_id for record in found.records] == ["mine"]
    assert [refusal.reason for refusal in found.refusals] == [
        "predictions[1]: the token is for model ml/churn, not 'ml/fraud'",
        "predictions[2]: the token is for model ml/churn, not 'team-b/churn'",
        "predictions[3]: the token is for model ml/churn, not '/churn'",
    ]


def test_a_request_of_more_records_than_allowed_is_refused_whole() -> None:
    sent = [{**GOOD, "requestId": f"r{index}"} for index in range(4)]
    assert len(predictions(sent, Admission(NOW, max_records=4)).records) == 4
    with pytest.raises(TooLargeError, match=r"^predictions: 4 records; the monitor takes at most 3 a request"):
        predictions(sent, Admission(NOW, max_records=3))
    with pytest.raises(TooLargeError, match=r"^outcomes: 4 records"):
        outcomes([{"model": "m", "requestId": "r", "label": 1}] * 4, Admission(NOW, max_records=3))


def test_outcomes_take_the_model_and_namespace_given_for_all() -> None:
    found = _only(outcomes({"outcomes": [{"requestId": "r", "label": 3.5}]}, AT_NOW, namespace="ml", model="price"))
    assert found == Outcome("ml", "price", "r", 3.5, NOW)
    assert _refusal(outcomes([{"requestId": "r", "label": 1}], AT_NOW)) == "outcomes[0].model: required"


def _parquet(frame: pd.DataFrame, **options: Any) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, **options)
    return buffer.getvalue()


def test_an_uploaded_table_is_read_row_by_row() -> None:
    frame = pd.DataFrame({"request_id": ["a", "b"], "label": [1, 0], "model": ["m", None]})
    found = outcome_table(frame.to_csv(index=False).encode(), "csv", AT_NOW, namespace="", model="default")
    assert [(outcome.model, outcome.label) for outcome in found.records] == [("m", 1.0), ("default", 0.0)]
    assert outcome_table(_parquet(frame), "parquet", AT_NOW, namespace="", model="default") == found
    with pytest.raises(RecordError, match="not a readable parquet file"):
        outcome_table(b"request_id,label\na,1\n", "parquet", AT_NOW, namespace="", model=None)


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_a_bad_row_of_a_table_is_refused_alone_across_chunks(form: str) -> None:
    """Rows are decoded 10,000 at a time; a refusal names its row in the whole table."""
    frame = pd.DataFrame({"request_id": [f"r{index}" for index in range(25_000)], "label": ["yes"] * 25_000})
    frame.loc[3, "request_id"] = "x" * 300
    frame.loc[21_000, "label"] = None
    data = frame.to_csv(index=False).encode() if form == "csv" else _parquet(frame, row_group_size=7_000)
    found = outcome_table(data, form, AT_NOW, namespace="ml", model="churn")
    assert len(found.records) == 24_998
    assert [(refusal.index, refusal.reason[:28]) for refusal in found.refusals] == [
        (3, "row 4.requestId: expected te"),
        (21_000, "row 21001.label: required"),
    ]


def _damaged_parquet_of(rows: int) -> bytes:
    """A Parquet file of `rows` dictionary-encoded rows whose data pages are overwritten with noise: only its
    metadata (at the end) can still be read."""
    indices = pa.array(np.zeros(rows, dtype=np.int32))
    column = pa.DictionaryArray.from_arrays(indices, pa.array(["same"]))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"request_id": column, "label": column}), buffer, row_group_size=rows)
    data = bytearray(buffer.getvalue())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4 : len(data) - footer] = b"\xff" * (len(data) - footer - 4)
    return bytes(data)


def test_a_parquet_upload_is_measured_from_its_metadata_before_it_is_decoded() -> None:
    """Millions of dictionary-encoded rows fit in kilobytes; the row count is checked before any page is read
    (its pages here are noise, and decoding them would fail)."""
    bomb = _damaged_parquet_of(2_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(TooLargeError) as raised:
        outcome_table(bomb, "parquet", Admission(NOW, max_records=100_000), namespace="", model="m")
    assert str(raised.value) == "the upload has 2,000,000 rows; the monitor takes at most 100,000 a request: split it"
    # Within the limit, the same file is decoded, and found damaged.
    with pytest.raises(RecordError, match="not a readable parquet file"):
        outcome_table(bomb, "parquet", Admission(NOW, max_records=2_000_000), namespace="", model="m")


def test_a_csv_upload_is_measured_before_it_is_decoded() -> None:
    rows = "\n".join(f"r{index},1" for index in range(1_001))
    with pytest.raises(TooLargeError, match=r"^the upload has more than 1,000 rows; the monitor takes at most 1,000"):
        outcome_table(
            f"request_id,label\n{rows}".encode(), "csv", Admission(NOW, max_records=1_000), namespace="", model="m"
        )
    wide = ",".join(["request_id", "label", *(f"f{index}" for index in range(2, 1_001))])
    with pytest.raises(
        TooLargeError, match=r"^the upload has 1,001 columns; the monitor reads tables of at most 1,000$"
    ):
        outcome_table(f"{wide}\n".encode(), "csv", AT_NOW, namespace="", model="m")
    with pytest.raises(TooLargeError, match=r"^the upload has 1,001 columns"):
        outcome_table(
            _parquet(pd.DataFrame({name: [1] for name in wide.split(",")})), "parquet", AT_NOW, namespace="", model="m"
        )
    with pytest.raises(RecordError, match=r"^the upload has no column label; columns: request_id, f2"):
        outcome_table(b"request_id,f2\na,1\n", "csv", AT_NOW, namespace="", model="m")


CE = {"ce-specversion": "1.0", "ce-id": "req-7", "ce-type": "org.kubeflow.serving.inference.response"}


def test_a_kserve_response_event_is_one_prediction_per_row() -> None:
    body = {"predictions": [1, 0], "probabilities": [[0.2, 0.8], [0.9, 0.1]], "classes": [0, 1]}
    found = cloud_event(CE | {"ce-namespace": "ml"}, body, AT_NOW, namespace="", model="churn", version="v2").records
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
    found = _only(cloud_event(CE, body, AT_NOW, namespace="ml", model="churn", version="v2"))
    assert (found.request_id, found.prediction, found.score) == ("req-7", "yes", 0.7)


def test_a_request_event_carries_no_prediction_and_a_bad_event_is_named() -> None:
    request = CE | {"ce-type": "org.kubeflow.serving.inference.request"}
    found = cloud_event(request, {"instances": [[1, 2]]}, AT_NOW, namespace="ml", model="churn", version="v2")
    assert (found.records, found.refusals) == ([], [])
    with pytest.raises(RecordError, match="not a CloudEvent"):
        cloud_event({}, {}, AT_NOW, namespace="ml", model="churn", version="v2")
    with pytest.raises(RecordError, match="name the version in the logger's URL"):
        cloud_event(CE, {"predictions": [1]}, AT_NOW, namespace="ml", model="churn", version="")
    with pytest.raises(RecordError, match='"predictions" output'):
        cloud_event(CE, {"outputs": []}, AT_NOW, namespace="ml", model="churn", version="v2")
    for payload in (
        {"predictions": 5},
        {"predictions": [1], "probabilities": [[0.5]], "classes": [0, 1]},
        {"predictions": [1, 0], "probabilities": [[0.5, 0.5]], "classes": [0, 1]},
        {"outputs": 7},
        {"outputs": [{"name": ["x"]}]},
    ):
        with pytest.raises(RecordError, match=r"^the response payload"):
            cloud_event(CE, payload, AT_NOW, namespace="ml", model="churn", version="v2")
