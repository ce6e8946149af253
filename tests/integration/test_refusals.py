"""A client's mistakes are 4xx, counted as 4xx and logged in one line, whichever layer refuses them (the body cap,
KServe's own decoding, Steward's checks); a failure of the server's own is still a 5xx."""

from __future__ import annotations

import http.client
import importlib
import json
import struct
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from steward_harness.predictors import Predictor
from steward_predictor.bundles import build_bundle
from tests.support.models import Trained, records

NAME = "breast-cancer"
MAX_BODY_BYTES = 200_000
MAX_ROWS = 500
JSON = {"content-type": "application/json"}
Body = tuple[str, bytes, dict[str, str]]


@pytest.fixture(scope="module")
def predictor(trained: dict[str, Trained]) -> Iterator[Predictor]:
    with Predictor(
        str(trained[NAME].path), name=NAME, args=[f"--max_body_bytes={MAX_BODY_BYTES}", f"--max_rows={MAX_ROWS}"]
    ) as server:
        assert server.ready()[0], server.tail()
        yield server


@pytest.fixture(scope="module")
def record(trained: dict[str, Trained]) -> dict[str, Any]:
    return records(trained[NAME].x_test.iloc[:1])[0]


def _v2_inputs(record: dict[str, Any], rows: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "shape": [rows],
            "datatype": "BYTES" if name == "size_band" else "FP64",
            "data": [value] * rows,
        }
        for name, value in record.items()
    ]


def _binary(inputs: list[dict[str, Any]], tensors: bytes, header_length: str | None = None) -> Body:
    """A V2 binary body: the JSON header, then the tensors' bytes."""
    header = json.dumps({"inputs": inputs}).encode()
    length = str(len(header)) if header_length is None else header_length
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": length}
    return f"/v2/models/{NAME}/infer", header + tensors, headers


def _v2(inputs: list[dict[str, Any]]) -> Body:
    return f"/v2/models/{NAME}/infer", json.dumps({"inputs": inputs}).encode(), JSON


def _v1(instances: list[Any]) -> Body:
    return f"/v1/models/{NAME}:predict", json.dumps({"instances": instances}).encode(), JSON


def _zero_rows(record: dict[str, Any]) -> Body:
    return _v2(_v2_inputs(record, rows=0))


def _short_buffer(record: dict[str, Any]) -> Body:
    # Two FP64 values declared, one sent.
    return _binary(
        [{"name": "mean radius", "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": 8}}],
        struct.pack("<d", 14.0),
    )


def _header_length(length: str) -> Callable[[dict[str, Any]], Body]:
    def body(record: dict[str, Any]) -> Body:
        inputs = [{"name": "mean radius", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": 8}}]
        return _binary(inputs, struct.pack("<d", 14.0), header_length=length)

    return body


def _huge_bytes_prefix(record: dict[str, Any]) -> Body:
    # A BYTES element says it is 2 GiB long; five bytes follow.
    inputs = [{"name": "size_band", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]
    return _binary(inputs, struct.pack("<I", 2**31) + b"small")


def _billion_rows(record: dict[str, Any]) -> Body:
    inputs = [{"name": "mean radius", "shape": [10**9], "datatype": "FP64", "parameters": {"binary_data_size": 8}}]
    return _binary(inputs, struct.pack("<d", 14.0))


def _header_not_an_object(record: dict[str, Any]) -> Body:
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": "5"}
    return f"/v2/models/{NAME}/infer", b"[1,2]", headers


def _input_without_shape(record: dict[str, Any]) -> Body:
    return _binary(
        [{"name": "mean radius", "datatype": "FP64", "parameters": {"binary_data_size": 8}}], struct.pack("<d", 14.0)
    )


def _duplicate_input(record: dict[str, Any]) -> Body:
    inputs = _v2_inputs(record)
    return _v2([*inputs, {**inputs[0], "data": [20.0]}])


def _numbers_sent_as_bytes(record: dict[str, Any]) -> Body:
    inputs = _v2_inputs(record)
    inputs[0]["datatype"] = "BYTES"
    return _v2(inputs)


def _fraction_sent_as_int(record: dict[str, Any]) -> Body:
    inputs = _v2_inputs(record)
    inputs[0]["datatype"] = "INT64"
    inputs[0]["data"] = [14.25]
    return _v2(inputs)


def _too_many_rows(record: dict[str, Any]) -> Body:
    return _v1([list(record.values())] * (MAX_ROWS + 1))


def _body_over_the_cap(record: dict[str, Any]) -> Body:
    # Valid, and larger than the cap.
    body = json.dumps({"instances": [list(record.values())] * 400, "padding": "x" * MAX_BODY_BYTES}).encode()
    return f"/v1/models/{NAME}:predict", body, JSON


def _not_json(record: dict[str, Any]) -> Body:
    return f"/v1/models/{NAME}:predict", b'{"instances": [', JSON


def _not_open_inference(record: dict[str, Any]) -> Body:
    return f"/v2/models/{NAME}/infer", json.dumps({"inputs": [{"name": "mean radius"}]}).encode(), JSON


MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], Body], int, str]] = {
    "V2 with zero rows": (_zero_rows, 400, "no rows"),
    "binary buffer shorter than its shape": (_short_buffer, 400, "malformed request"),
    "inference-header-content-length not a number": (_header_length("abc"), 400, "malformed request"),
    "inference-header-content-length negative": (_header_length("-5"), 400, ""),
    "inference-header-content-length beyond the body": (_header_length("1000000"), 400, ""),
    "BYTES length prefix of 2 GiB": (_huge_bytes_prefix, 400, "malformed request"),
    "binary shape [1e9]": (_billion_rows, 400, "malformed request"),
    "binary header not a JSON object": (_header_not_an_object, 400, "malformed request"),
    "binary input without a shape": (_input_without_shape, 400, "malformed request"),
    "duplicate input names": (_duplicate_input, 400, "input 'mean radius' is sent 2 times"),
    "numbers declared BYTES": (_numbers_sent_as_bytes, 400, "datatype BYTES"),
    "a fraction declared INT64": (_fraction_sent_as_int, 400, "datatype INT64"),
    "more rows than --max_rows": (_too_many_rows, 400, f"at most {MAX_ROWS}"),
    "V1 body that is not JSON": (_not_json, 400, "Unrecognized request format"),
    "V2 body that is not Open Inference": (_not_open_inference, 422, "inputs.0.shape"),
    "body over --max_body_bytes": (_body_over_the_cap, 413, f"at most {MAX_BODY_BYTES} bytes"),
}


def _requests(predictor: Predictor) -> dict[tuple[str, str], float]:
    """steward_predictor_requests_total by protocol and code."""
    _, text = predictor.get("/metrics")
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "steward_predictor_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[(sample.labels["protocol"], sample.labels["code"])] = sample.value
    return counts


def _server_errors(counts: dict[tuple[str, str], float]) -> float:
    return sum(value for (_, code), value in counts.items() if code.startswith("5"))


def _send(predictor: Predictor, path: str, body: bytes | Iterator[bytes], headers: dict[str, str]) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", predictor.port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers=headers, encode_chunked=not isinstance(body, bytes))
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def _error(text: str) -> str:
    body = json.loads(text)
    return str(body.get("error") or body.get("detail"))


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_a_malformed_request_is_a_4xx_counted_as_such_and_logged_in_one_line(
    predictor: Predictor, record: dict[str, Any], kind: str
) -> None:
    make, expected, says = MALFORMED[kind]
    path, body, headers = make(record)
    protocol = "v1" if path.startswith("/v1/") else "v2"
    before, logged = _requests(predictor), len(predictor.log.read_text())
    status, text = _send(predictor, path, body, headers)
    assert status == expected, text
    assert says in _error(text), text
    after = _requests(predictor)
    assert after.get((protocol, str(status)), 0) == before.get((protocol, str(status)), 0) + 1, after
    assert _server_errors(after) == _server_errors(before)
    new = predictor.log.read_text()[logged:]
    assert "Traceback" not in new, new


def test_a_chunked_body_over_the_cap_is_refused_while_it_is_read(predictor: Predictor, record: dict[str, Any]) -> None:
    chunk = json.dumps([list(record.values())] * 20).encode()

    def chunks() -> Iterator[bytes]:
        # No length announced, and twenty times the cap in all.
        yield b'{"instances": ['
        for _ in range(20 * MAX_BODY_BYTES // len(chunk)):
            yield chunk[1:-1] + b","
        yield chunk[1:-1] + b"]}"

    before = _requests(predictor)
    status, text = _send(predictor, f"/v1/models/{NAME}:predict", chunks(), JSON)
    assert status == 413, text
    assert f"at most {MAX_BODY_BYTES} bytes" in _error(text)
    assert _requests(predictor).get(("v1", "413"), 0) == before.get(("v1", "413"), 0) + 1


def test_a_request_within_the_caps_is_still_answered(predictor: Predictor, record: dict[str, Any]) -> None:
    status, text = _send(predictor, *_v1([list(record.values())] * MAX_ROWS))
    assert status == 200, text
    assert len(json.loads(text)["predictions"]) == MAX_ROWS


FAILING_FEATURES = """
import numpy as np
def fail_on_sentinel(x):
    x = np.asarray(x, dtype=float)
    if (x == 4242.0).any():
        raise ValueError("the feature code cannot handle 4242")
    return x
"""


@pytest.fixture
def failing_bundle(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A bundle whose feature code fails on one value (far outside the training range, which the schema only
    counts), and the directory of that code."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "steward_failing_features.py").write_text(textwrap.dedent(FAILING_FEATURES))
    sys.path.insert(0, str(code))
    try:
        features = importlib.import_module("steward_failing_features")
        rng = np.random.default_rng(0)
        x = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
        y = (x["a"] + x["b"] > 0).astype(int)
        pipeline = Pipeline(
            [("features", FunctionTransformer(features.fail_on_sentinel)), ("model", LogisticRegression())]
        ).fit(x, y)
        path = tmp_path / "bundle"
        build_bundle(pipeline, x, y, model_version="v1").save(path)
        yield path, code
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("steward_failing_features", None)


def test_a_failure_of_the_server_itself_is_still_a_5xx(failing_bundle: tuple[Path, Path]) -> None:
    path, code = failing_bundle
    with Predictor(
        str(path),
        name="failing",
        args=["--trust_type=steward_failing_features.fail_on_sentinel"],
        env={"PYTHONPATH": str(code)},
    ) as predictor:
        assert predictor.ready()[0], predictor.tail()
        status, _ = _send(predictor, *_failing_request(0.5))
        assert status == 200
        status, text = _send(predictor, *_failing_request(4242.0))
        assert status == 500, text
        log = predictor.log.read_text()
        assert "the feature code cannot handle 4242" in log
        assert "Traceback" in log
        inputs = [{"name": name, "shape": [1], "datatype": "FP64", "data": [4242.0]} for name in ("a", "b")]
        status, text = _send(predictor, "/v2/models/failing/infer", json.dumps({"inputs": inputs}).encode(), JSON)
        assert status == 500, text
        counts = _requests(predictor)
        assert counts[("v1", "500")] == 1
        assert counts[("v2", "500")] == 1
        assert counts[("v1", "200")] == 1


def _failing_request(value: float) -> Body:
    return "/v1/models/failing:predict", json.dumps({"instances": [{"a": value, "b": 0.1}]}).encode(), JSON
