"""What the predictor makes of a request before scoring it: the request id it passes on, and the V2 inputs and row
counts it accepts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from steward_monitor import records as monitor_records
from steward_predictor.defaults import MAX_REQUEST_ID
from steward_predictor.model import check_request, request_id
from steward_predictor.schemas import infer_schema
from steward_predictor.settings import Settings
from steward_predictor.validating import Validator

# Ids as real clients and meshes send them.
REAL_IDS = [
    str(uuid.uuid4()),
    uuid.uuid4().hex,
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    "dGhpcyBpcyBhbiBpZA==",
    "A234-1234-1234",
    "order:17/line@3.2_b+c~d",
    "x" * MAX_REQUEST_ID,
]
UNUSABLE_IDS = [
    "x" * (MAX_REQUEST_ID + 1),
    "a" * 300,
    "two words",
    "line\nbreak",
    "caf\u00e9",
    'say "hi"',
    "back\\slash",
]


def _v2(payload_id: str | None = None) -> InferRequest:
    return InferRequest("model", [InferInput("age", [1], "FP64", [41.0])], request_id=payload_id)


@pytest.mark.parametrize("sent", REAL_IDS)
def test_real_request_ids_are_passed_on_as_sent(sent: str) -> None:
    assert request_id({"x-request-id": sent}, {}) == (sent, "")
    assert request_id({"ce-id": sent}, {}) == (sent, "")
    assert request_id({}, _v2(sent)) == (sent, "")


@pytest.mark.parametrize("sent", UNUSABLE_IDS)
def test_an_unusable_request_id_is_replaced_by_a_fresh_one_saying_why(sent: str) -> None:
    for headers, payload, source in (
        ({"x-request-id": sent}, {}, "x-request-id"),
        ({"ce-id": sent}, {}, "ce-id"),
        ({}, _v2(sent), "the V2 id"),
    ):
        used, why = request_id(headers, payload)
        assert used != sent
        assert len(used) == 32
        assert source in why
        assert f"1 to {MAX_REQUEST_ID}" in why
        assert why.isascii()
        assert sent not in why


def test_headers_come_before_the_v2_id_and_a_missing_id_is_made() -> None:
    assert request_id({"x-request-id": "header", "ce-id": "event"}, _v2("body")) == ("header", "")
    assert request_id({"ce-id": "event"}, _v2("body")) == ("event", "")
    first, why = request_id({}, {})
    assert why == ""
    assert first != request_id({}, {})[0]


@pytest.mark.parametrize("max_rows", [Settings().max_rows, 10**9])
def test_every_id_passed_on_is_one_the_monitor_stores(max_rows: int) -> None:
    # A request of several rows is reported as <id>-<row>: the longest id on the last row must still fit.
    for sent in [*REAL_IDS, *UNUSABLE_IDS]:
        used, _ = request_id({"x-request-id": sent}, {})
        for row_id in (used, f"{used}-{max_rows - 1}"):
            event = {"model": "churn", "version": "v1", "requestId": row_id, "prediction": 1}
            batch = monitor_records.predictions([event], monitor_records.Admission(received=datetime.now(UTC)))
            assert not batch.refusals, batch.refusals
            assert [stored.request_id for stored in batch.records] == [row_id]


@pytest.fixture
def validator() -> Validator:
    return Validator(infer_schema(pd.DataFrame({"age": [25.0, 61.0, 40.0], "plan": ["basic", "pro", None]})))


def _request(*inputs: tuple[str, list[int], str, list[Any]]) -> InferRequest:
    return InferRequest("model", [InferInput(name, shape, datatype, data) for name, shape, datatype, data in inputs])


def test_v2_inputs_of_the_declared_datatype_are_accepted(validator: Validator) -> None:
    checked = check_request(
        validator, _request(("age", [2], "FP64", [41, 42.5]), ("plan", [2, 1], "BYTES", ["pro", None])), 100
    )
    assert not checked.rejected
    assert checked.frame["age"].tolist() == [41.0, 42.5]
    checked = check_request(validator, _request(("age", [1], "INT32", [41]), ("plan", [1], "BYTES", ["pro"])), 100)
    assert checked.frame["age"].tolist() == [41.0]


@pytest.mark.parametrize(
    ("age", "says"),
    [
        (("BYTES", [41.0]), "input 'age': datatype BYTES, but row 0 holds a float"),
        (("INT64", [41, 41.5]), "input 'age': datatype INT64, but row 1 holds a float"),
        (("FP64", [True]), "input 'age': datatype FP64, but row 0 holds a bool"),
        (("UINT8", [-1]), "input 'age': datatype UINT8, but row 0 holds a negative number"),
        (("FP65", [41.0]), "input 'age': datatype FP65 is not an Open Inference datatype"),
    ],
)
def test_a_v2_datatype_that_does_not_match_its_data_is_refused(
    validator: Validator, age: tuple[str, list[Any]], says: str
) -> None:
    datatype, data = age
    with pytest.raises(InvalidInput, match=says):
        check_request(
            validator,
            _request(("age", [len(data)], datatype, data), ("plan", [len(data)], "BYTES", ["pro"] * len(data))),
            100,
        )


def test_an_input_sent_twice_is_refused(validator: Validator) -> None:
    request = _request(("age", [1], "FP64", [41.0]), ("plan", [1], "BYTES", ["pro"]), ("age", [1], "FP64", [50.0]))
    with pytest.raises(InvalidInput, match="input 'age' is sent 2 times"):
        check_request(validator, request, 100)


def test_a_request_without_rows_is_refused(validator: Validator) -> None:
    with pytest.raises(InvalidInput, match="no rows"):
        check_request(validator, _request(("age", [0], "FP64", []), ("plan", [0], "BYTES", [])), 100)
    with pytest.raises(InvalidInput, match="non-empty list"):
        check_request(validator, {"instances": []}, 100)


def test_more_rows_than_the_cap_are_refused_before_they_are_read(validator: Validator) -> None:
    record = {"age": 41.0, "plan": "pro"}
    assert not check_request(validator, {"instances": [record] * 3}, 3).rejected
    with pytest.raises(InvalidInput, match="4 rows; at most 3"):
        check_request(validator, {"instances": [record] * 4}, 3)
    # The shape alone says how many rows: the data is not looked at.
    with pytest.raises(InvalidInput, match="1000000000 rows; at most 3"):
        check_request(validator, _request(("age", [10**9], "FP64", [41.0]), ("plan", [1], "BYTES", ["pro"])), 3)
