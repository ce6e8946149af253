"""Thousands of malformed requests against a real server: never a 5xx, and every 4xx says what was wrong."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steward_harness.predictors import Predictor
from tests.support.models import Trained, records

NAME = "breast-cancer"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


class Client:
    """One keep-alive connection, reopened if the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.statuses: dict[int, int] = {}

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
        for attempt in (1, 2):
            try:
                self.connection.request("POST", path, body=body, headers={"content-type": content_type})
                response = self.connection.getresponse()
                status, text = response.status, response.read().decode(errors="replace")
                self.statuses[status] = self.statuses.get(status, 0) + 1
                return status, text
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def client(trained: dict[str, Trained]) -> Iterator[Client]:
    with Predictor(str(trained[NAME].path), name=NAME) as predictor:
        assert predictor.ready()[0], predictor.tail()
        client = Client(predictor.port)
        yield client
        client.connection.close()
        print(f"\nfuzz responses by status: {dict(sorted(client.statuses.items()))}")
        assert predictor.get("/v2/health/live")[0] == 200


def _message(text: str) -> str:
    body = json.loads(text)
    message = body.get("error") or body.get("detail")
    assert message, f"a 4xx without a message: {text}"
    return json.dumps(message) if not isinstance(message, str) else message


@pytest.fixture(scope="module")
def valid_record(trained: dict[str, Trained]) -> dict[str, Any]:
    return records(trained[NAME].x_test.iloc[:1])[0]


@settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=json_values, v2=st.booleans(), raw=st.binary(max_size=40), use_raw=st.booleans())
def test_arbitrary_bodies_never_break_the_server(
    client: Client, body: Any, v2: bool, raw: bytes, use_raw: bool
) -> None:
    path = f"/v2/models/{NAME}/infer" if v2 else f"/v1/models/{NAME}:predict"
    payload = raw if use_raw else json.dumps(body).encode()
    status, text = client.post(path, payload)
    assert status < 500, text
    if status >= 400:
        assert len(_message(text)) > 10, text


@settings(max_examples=3000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), v2=st.booleans())
def test_a_broken_field_is_refused_by_name(
    client: Client, valid_record: dict[str, Any], data: st.DataObject, v2: bool
) -> None:
    field = data.draw(st.sampled_from(sorted(valid_record)))
    numeric = field != "size_band"
    wrong = (
        st.text(min_size=1, max_size=10) | st.booleans() | st.lists(st.integers(), max_size=2)
        if numeric
        else st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.booleans()
        | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
    )
    value = data.draw(wrong)
    record = {**valid_record, field: value}
    if v2:
        inputs = [
            {"name": name, "shape": [1], "datatype": "BYTES" if isinstance(item, str) else "FP64", "data": [item]}
            for name, item in record.items()
        ]
        status, text = client.post(f"/v2/models/{NAME}/infer", json.dumps({"inputs": inputs}).encode())
    else:
        status, text = client.post(f"/v1/models/{NAME}:predict", json.dumps({"instances": [record]}).encode())
    assert 400 <= status < 500, text
    message = _message(text)
    assert field in message, message
