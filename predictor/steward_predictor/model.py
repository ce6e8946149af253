"""The KServe model: loads a bundle, refuses to serve until it checks out, validates and scores every request."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from steward_predictor import parity
from steward_predictor.bundles import Bundle, BundleError, load_bundle
from steward_predictor.metrics import Families, ModelMetrics
from steward_predictor.reporting import Reporter
from steward_predictor.schemas import Checked, Validator
from steward_predictor.settings import Settings

logger = logging.getLogger("steward.predictor")
# A 400 lists at most this many problems; the rest are counted, so an error body stays readable.
MAX_REPORTED_PROBLEMS = 20
_V2_TYPES = {"i": "INT64", "u": "UINT64", "f": "FP64", "b": "BOOL"}


class StewardModel(kserve.Model):  # type: ignore[misc]
    """A Steward bundle served over KServe's V1 and V2 (Open Inference) protocols."""

    def __init__(self, name: str, settings: Settings, families: Families, reporter: Reporter | None = None) -> None:
        super().__init__(name, return_response_headers=True)
        self.settings = settings
        self.families = families
        self.reporter = reporter
        self.reason = "the bundle has not been loaded yet"
        self.loaded: Loaded | None = None

    def load(self) -> bool:
        """Load and check the bundle. Any failure keeps the model not-ready, with the reason on the readiness
        endpoints and in the log; the server stays up so the reason can be read."""
        settings = self.settings
        self.ready = False
        try:
            bundle = load_bundle(
                settings.bundle_uri,
                expected_digest=settings.bundle_digest,
                allow_pickle=settings.allow_pickle,
                trusted_types=settings.trusted_types,
            )
            if settings.model_version and bundle.version != settings.model_version:
                raise BundleError(f"the bundle holds model version {bundle.version}, not {settings.model_version}")
            validator = Validator(bundle.schema)
            skew = parity.check(bundle, validator)
            if skew:
                raise BundleError(
                    f"training/serving skew: golden examples no longer reproduce ({'; '.join(skew[:5])}); trained "
                    f"with scikit-learn {bundle.metadata.sklearn}, numpy {bundle.metadata.numpy}"
                )
        except BundleError as error:
            self.reason = str(error)
            logger.error("model %s is not ready: %s", self.name, self.reason)
            ModelMetrics(self.families, self.name, settings.model_version or "unknown", settings.variant).ready.set(0)
            return False
        metrics = ModelMetrics(self.families, self.name, bundle.version, settings.variant)
        metrics.attach(bundle)
        metrics.thresholds(settings.drift_thresholds)
        metrics.ready.set(1)
        self.loaded = Loaded(bundle, validator, metrics)
        self.reason = ""
        self.ready = True
        logger.info(
            "model %s serves version %s (%s) as %s; golden examples reproduce",
            self.name,
            bundle.version,
            bundle.digest,
            settings.variant,
        )
        return True

    def start(self) -> None:
        """KServe marks a model ready here; Steward's readiness is decided by load() alone."""

    async def healthy(self) -> bool:
        if not self.ready:
            raise ModelNotReady(self.name, self.reason)
        return True

    def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: Mapping[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        loaded = self.loaded
        if loaded is None:
            raise ModelNotReady(self.name, self.reason)
        bundle, metrics = loaded.bundle, loaded.metrics
        started = time.perf_counter()
        protocol = "v2" if isinstance(payload, InferRequest) else "v1"
        request_id = _request_id(headers or {}, payload)
        if response_headers is not None:
            response_headers.update(
                {
                    "x-request-id": request_id,
                    "x-steward-model-version": bundle.version,
                    "x-steward-variant": self.settings.variant,
                }
            )
        try:
            checked = _check(loaded.validator, payload)
            metrics.observe_inputs(checked)
            if checked.rejected:
                raise InvalidInput(_explain(checked))
            predictions, probabilities = bundle.predict(checked.frame)
            metrics.observe_outputs(predictions, probabilities)
        except InvalidInput:
            metrics.request(protocol, 400)
            raise
        except Exception:
            metrics.request(protocol, 500)
            logger.exception("request %s failed", request_id)
            raise
        metrics.request(protocol, 200)
        metrics.latency.observe(time.perf_counter() - started)
        if self.reporter is not None:
            scores = probabilities[:, 1] if probabilities is not None and probabilities.shape[1] == 2 else None
            self.reporter.report(bundle.version, self.settings.variant, request_id, predictions, scores)
        if isinstance(payload, InferRequest):
            return _v2_response(self.name, bundle, request_id, predictions, probabilities)
        return _v1_response(bundle, predictions, probabilities)


@dataclass(frozen=True)
class Loaded:
    """A bundle that passed its checks, with what serving it needs."""

    bundle: Bundle
    validator: Validator
    metrics: ModelMetrics


def _check(validator: Validator, payload: dict[str, Any] | InferRequest) -> Checked:
    if isinstance(payload, InferRequest):
        columns: dict[str, Any] = {}
        rows: int | None = None
        for tensor in payload.inputs:
            shape = list(tensor.shape)
            if len(shape) == 2 and shape[1] == 1:
                shape = shape[:1]
            if len(shape) != 1:
                raise InvalidInput(f"input '{tensor.name}': expected shape [rows] or [rows, 1], got {tensor.shape}")
            data = tensor.data
            values = data.tolist() if isinstance(data, np.ndarray) else list(data)
            if len(values) != shape[0]:
                raise InvalidInput(f"input '{tensor.name}': shape says {shape[0]} values, data has {len(values)}")
            columns[tensor.name] = values
            rows = shape[0] if rows is None else rows
        if not columns:
            raise InvalidInput("the request has no inputs: send one named input per feature")
        return validator.check_columns(columns, rows or 0)
    if isinstance(payload, bytes | str):
        raise InvalidInput("the request body must be JSON, sent with content-type: application/json")
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('expected a JSON object with "instances": a list of records or rows')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list of records or rows')
    return validator.check_records(instances)


def _v1_response(bundle: Bundle, predictions: np.ndarray, probabilities: np.ndarray | None) -> dict[str, Any]:
    response: dict[str, Any] = {"predictions": predictions.tolist()}
    if probabilities is not None:
        # One row per instance, one column per class, in the order of "classes".
        response["probabilities"] = probabilities.tolist()
        response["classes"] = bundle.metadata.classes
    return response


def _v2_response(
    name: str, bundle: Bundle, request_id: str, predictions: np.ndarray, probabilities: np.ndarray | None
) -> InferResponse:
    outputs = [_tensor("predictions", predictions)]
    if probabilities is not None:
        for position, label in enumerate(bundle.metadata.classes or []):
            outputs.append(_tensor(f"probability_{label}", probabilities[:, position]))
    return InferResponse(response_id=request_id, model_name=name, model_version=bundle.version, infer_outputs=outputs)


def _tensor(name: str, values: np.ndarray) -> InferOutput:
    datatype = _V2_TYPES.get(values.dtype.kind, "BYTES")
    data = values.tolist() if datatype != "BYTES" else [str(value) for value in values.tolist()]
    return InferOutput(name=name, shape=[len(data)], datatype=datatype, data=data)


def _request_id(headers: Mapping[str, str], payload: dict[str, Any] | InferRequest) -> str:
    lowered = {key.lower(): value for key, value in headers.items()}
    for header in ("x-request-id", "ce-id"):
        if lowered.get(header):
            return lowered[header]
    if isinstance(payload, InferRequest) and payload.id:
        return str(payload.id)
    return uuid.uuid4().hex


def _explain(checked: Checked) -> str:
    problems = checked.problems
    shown = "; ".join(str(problem) for problem in problems[:MAX_REPORTED_PROBLEMS])
    more = f" (and {len(problems) - MAX_REPORTED_PROBLEMS} more)" if len(problems) > MAX_REPORTED_PROBLEMS else ""
    return f"invalid request: {shown}{more}"
