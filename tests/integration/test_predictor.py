"""The predictor as a real server process: both protocols, KServe's own client, validation, request ids and
metrics, against models trained on scikit-learn's bundled datasets."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from prometheus_client.parser import text_string_to_metric_families

from steward_harness.predictors import Predictor
from tests.support.models import Trained, as_sent, records

MODELS = ["breast-cancer", "wine", "diabetes"]


def _v2_inputs(frame: pd.DataFrame) -> list[dict[str, Any]]:
    inputs = []
    for name in frame.columns:
        values = [as_sent(value) for value in frame[name].tolist()]
        datatype = "FP64" if frame[name].dtype.kind == "f" else "BYTES"
        inputs.append({"name": name, "shape": [len(values)], "datatype": datatype, "data": values})
    return inputs


@pytest.fixture(scope="module")
def servers(trained: dict[str, Trained]) -> Iterator[dict[str, Predictor]]:
    started: dict[str, Predictor] = {}
    try:
        for name in MODELS:
            started[name] = Predictor(str(trained[name].path), name=name, env={"STEWARD_VARIANT": "challenger"}).start()
        for predictor in started.values():
            assert predictor.ready()[0], predictor.tail()
        yield started
    finally:
        for predictor in started.values():
            predictor.stop()


def _expected(model: Trained, frame: pd.DataFrame) -> tuple[list[Any], np.ndarray | None]:
    predictions = model.pipeline.predict(frame).tolist()
    probabilities = model.pipeline.predict_proba(frame) if hasattr(model.pipeline, "predict_proba") else None
    return predictions, probabilities


@pytest.mark.parametrize("name", MODELS)
def test_v1_records_and_rows_predict_exactly_what_the_pipeline_does(
    servers: dict[str, Predictor], trained: dict[str, Trained], name: str
) -> None:
    model, predictor = trained[name], servers[name]
    frame = model.x_test
    predictions, probabilities = _expected(model, frame)
    for instances in (records(frame), [list(row.values()) for row in records(frame)]):
        status, _, body = predictor.post(f"/v1/models/{name}:predict", {"instances": instances})
        assert status == 200, body
        answer = json.loads(body)
        if model.bundle.metadata.task == "regression":
            assert np.allclose(answer["predictions"], predictions, rtol=1e-9)
        else:
            assert answer["predictions"] == predictions
            assert probabilities is not None
            assert answer["classes"] == model.pipeline.classes_.tolist()
            assert np.allclose(answer["probabilities"], probabilities, rtol=1e-9)


@pytest.mark.parametrize("name", MODELS)
def test_v2_columnar_inputs_predict_exactly_what_the_pipeline_does(
    servers: dict[str, Predictor], trained: dict[str, Trained], name: str
) -> None:
    model, predictor = trained[name], servers[name]
    frame = model.x_test
    predictions, probabilities = _expected(model, frame)
    status, _, body = predictor.post(f"/v2/models/{name}/infer", {"id": "abc", "inputs": _v2_inputs(frame)})
    assert status == 200, body
    answer = json.loads(body)
    assert answer["id"] == "abc"
    assert answer["model_version"] == "v1"
    outputs = {output["name"]: output["data"] for output in answer["outputs"]}
    if model.bundle.metadata.task == "regression":
        assert np.allclose(outputs["predictions"], predictions, rtol=1e-9)
    else:
        assert [str(label) for label in outputs["predictions"]] == [str(label) for label in predictions]
        assert probabilities is not None
        for position, label in enumerate(model.pipeline.classes_):
            assert np.allclose(outputs[f"probability_{label}"], probabilities[:, position], rtol=1e-9)


def test_kserve_rest_client_works_with_both_protocols(
    servers: dict[str, Predictor], trained: dict[str, Trained]
) -> None:
    model, predictor = trained["breast-cancer"], servers["breast-cancer"]
    frame = model.x_test.iloc[:5]

    async def ask() -> tuple[Any, Any]:
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        inputs = []
        for spec in _v2_inputs(frame):
            tensor = InferInput(spec["name"], spec["shape"], spec["datatype"])
            tensor.set_data_from_numpy(np.asarray(spec["data"], dtype=object if spec["datatype"] == "BYTES" else float))
            inputs.append(tensor)
        v2_response = await v2.infer(predictor.url, InferRequest("breast-cancer", inputs), model_name="breast-cancer")
        ready = await v2.is_model_ready(predictor.url, "breast-cancer")
        await v2.close()
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
        v1_response = await v1.infer(predictor.url, {"instances": records(frame)}, model_name="breast-cancer")
        await v1.close()
        assert ready
        return v2_response, v1_response

    v2_response, v1_response = asyncio.run(ask())
    expected = model.pipeline.predict(frame).tolist()
    assert [int(value) for value in v2_response.outputs[0].data] == expected
    assert v1_response["predictions"] == expected


def test_request_ids_are_honoured_or_made(servers: dict[str, Predictor], trained: dict[str, Trained]) -> None:
    predictor = servers["wine"]
    body = {"instances": records(trained["wine"].x_test.iloc[:1])}
    _, headers, _ = predictor.post("/v1/models/wine:predict", body, {"x-request-id": "req-42"})
    assert headers["x-request-id"] == "req-42"
    _, headers, _ = predictor.post("/v1/models/wine:predict", body, {"ce-id": "event-7"})
    assert headers["x-request-id"] == "event-7"
    _, first, _ = predictor.post("/v1/models/wine:predict", body)
    _, second, _ = predictor.post("/v1/models/wine:predict", body)
    assert len(first["x-request-id"]) == 32
    assert first["x-request-id"] != second["x-request-id"]
    assert first["x-steward-variant"] == "challenger"
    assert first["x-steward-model-version"] == "v1"
    assert "x-steward-request-id-replaced" not in first


@pytest.mark.parametrize(
    "unusable",
    ["a" * 300, "two words", "caf\u00e9", 'quote"d', "tab\there"],
    ids=["long", "space", "accent", "quote", "tab"],
)
def test_an_unusable_request_id_is_replaced_and_the_answer_says_so(
    servers: dict[str, Predictor], trained: dict[str, Trained], unusable: str
) -> None:
    # An id the monitor would refuse would cost every event in the batch it travels in: it is never passed on.
    predictor = servers["wine"]
    frame = trained["wine"].x_test.iloc[:2]
    _, headers, _ = predictor.post(
        "/v1/models/wine:predict", {"instances": records(frame)}, {"x-request-id": unusable.encode().decode("latin-1")}
    )
    assert headers["x-request-id"] != unusable
    assert len(headers["x-request-id"]) == 32
    assert "x-request-id" in headers["x-steward-request-id-replaced"]
    status, headers, body = predictor.post("/v2/models/wine/infer", {"id": unusable, "inputs": _v2_inputs(frame)})
    assert status == 200, body
    assert json.loads(body)["id"] == headers["x-request-id"] != unusable
    assert "the V2 id" in headers["x-steward-request-id-replaced"]


def test_bad_values_are_refused_naming_field_and_row(
    servers: dict[str, Predictor], trained: dict[str, Trained]
) -> None:
    predictor = servers["breast-cancer"]
    good = records(trained["breast-cancer"].x_test.iloc[:3])
    bad = [dict(good[0]), dict(good[1]), dict(good[2])]
    bad[1]["mean radius"] = "large"
    bad[2]["size_band"] = 3
    bad[2]["customer_id"] = "c-17"
    del bad[0]["mean area"]
    status, _, body = predictor.post("/v1/models/breast-cancer:predict", {"instances": bad})
    assert status == 400
    error = json.loads(body)["error"]
    assert "row 0, field 'mean area': missing field" in error
    assert "row 1, field 'mean radius': expected a number, got text 'large'" in error
    assert "row 2, field 'size_band': expected text, got int 3" in error
    assert "row 2, field 'customer_id': unknown field" in error

    status, _, body = predictor.post(
        "/v2/models/breast-cancer/infer",
        {"inputs": [{"name": "mean radius", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}]},
    )
    assert status == 400
    assert "field 'size_band': missing input" in json.loads(body)["error"]


def test_counted_problems_are_accepted_and_show_in_metrics(
    servers: dict[str, Predictor], trained: dict[str, Trained]
) -> None:
    predictor = servers["diabetes"]
    record = records(trained["diabetes"].x_test.iloc[:1])[0]
    record["bmi"] = 9.0  # far outside the training range: accepted, counted
    record["size_band"] = "enormous"  # never seen in training: accepted, counted
    status, _, body = predictor.post("/v1/models/diabetes:predict", {"instances": [record]})
    assert status == 200, body
    counted = _samples(predictor, "steward_predictor_feature_problems", ("feature", "problem", "action"))
    assert counted[("bmi", "outOfRange", "counted")] >= 1
    assert counted[("size_band", "unseenCategory", "counted")] >= 1


def _samples(predictor: Predictor, family: str, keys: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """One family's counters, keyed by the values of the labels named in `keys`."""
    _, text = predictor.get("/metrics")
    found: dict[tuple[str, ...], float] = {}
    for metric in text_string_to_metric_families(text):
        if metric.name == family:
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    found[tuple(sample.labels[key] for key in keys)] = sample.value
    return found


def test_metrics_are_labelled_bounded_and_pass_promtool(
    servers: dict[str, Predictor], trained: dict[str, Trained], tmp_path: Path
) -> None:
    predictor = servers["breast-cancer"]
    predictor.post("/v1/models/breast-cancer:predict", {"instances": records(trained["breast-cancer"].x_test)})
    _, metrics = predictor.get("/metrics")
    families = {line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE steward_")}
    assert families >= {
        "steward_predictor_requests_total",
        "steward_predictor_request_duration_seconds",
        "steward_predictor_rows_total",
        "steward_predictor_feature_values_total",
        "steward_predictor_feature_missing_total",
        "steward_predictor_predictions_total",
        "steward_predictor_scores_total",
        "steward_predictor_model_info",
        "steward_predictor_ready",
        "steward_predictor_holdout",
        "steward_predictor_feature_training_share",
        "steward_predictor_prediction_training_share",
    }
    holdout = trained["breast-cancer"].bundle.holdout
    data = holdout["fingerprint"].removeprefix("sha256:")[:16]
    for metric in ("accuracy", "rocAuc", "logLoss"):
        sample = f'steward_predictor_holdout{{data="{data}",metric="{metric}",model="breast-cancer"'
        (line,) = [line for line in metrics.splitlines() if line.startswith(sample)]
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(holdout[metric])
    for line in metrics.splitlines():
        if line.startswith("steward_"):
            for label in ('model="breast-cancer"', 'version="v1"', 'variant="challenger"'):
                assert label in line, line
    bins = [line for line in metrics.splitlines() if line.startswith("steward_predictor_feature_values_total")]
    bundle = trained["breast-cancer"].bundle
    assert len(bins) <= sum(len(histogram.labels) for histogram in bundle.baselines.features)
    # What drift compares against: the training shares, one per bin, summing to 1 per feature.
    shares: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("steward_predictor_feature_training_share{"):
            feature = line.split('feature="', 1)[1].split('"', 1)[0]
            shares[feature] = shares.get(feature, 0.0) + float(line.rsplit(" ", 1)[1])
    assert set(shares) == {histogram.name for histogram in bundle.baselines.features}
    assert all(total == pytest.approx(1.0) for total in shares.values())
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    check = subprocess.run([promtool, "check", "metrics"], input=metrics, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_histograms_count_exactly_what_was_served(servers: dict[str, Predictor], trained: dict[str, Trained]) -> None:
    model, predictor = trained["wine"], servers["wine"]
    frame = model.x_test
    before_classes = _samples(predictor, "steward_predictor_predictions", ("bin",))
    before_values = _samples(predictor, "steward_predictor_feature_values", ("feature", "bin"))
    before_missing = _samples(predictor, "steward_predictor_feature_missing", ("feature",))
    status, _, body = predictor.post("/v1/models/wine:predict", {"instances": records(frame)})
    assert status == 200, body

    classes = _samples(predictor, "steward_predictor_predictions", ("bin",))
    served = pd.Series(model.pipeline.predict(frame)).value_counts()
    for label, count in served.items():
        assert classes[(str(label),)] - before_classes.get((str(label),), 0) == count
    values = _samples(predictor, "steward_predictor_feature_values", ("feature", "bin"))
    missing = _samples(predictor, "steward_predictor_feature_missing", ("feature",))
    for name in frame.columns:
        seen = sum(count - before_values.get(key, 0) for key, count in values.items() if key[0] == name)
        gaps = missing[(name,)] - before_missing.get((name,), 0)
        assert seen + gaps == len(frame), name
        assert gaps == frame[name].isna().sum(), name
