"""The KServe model, the online front end of the one scoring path (scoring.py): not ready until the bundle checks
out, then every V1 or V2 request translated into rows to score, and the predictions into its answer."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from steward_predictor import scoring
from steward_predictor.bundles import Bundle
from steward_predictor.defaults import MAX_REQUEST_ID, REQUEST_ID, REQUEST_ID_CHARACTERS
from steward_predictor.metrics import Families, ModelMetrics
from steward_predictor.observers import Metered, PredictionLog
from steward_predictor.prediction_log import Reporter
from steward_predictor.schemas import Checked
from steward_predictor.settings import Settings
from steward_predictor.validating import Validator

logger = logging.getLogger("steward.predictor")
# A 400 lists at most this many problems; the rest are counted, so an error body stays readable.
MAX_REPORTED_PROBLEMS = 20
_V2_TYPES = {"i": "INT64", "u": "UINT64", "f": "FP64", "b": "BOOL"}
# The Open Inference datatypes and the Python types of the values each may carry; null, a missing value, in any.
_INTEGERS = frozenset({int, type(None)})
_DATATYPES: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool, type(None)}),
    **{f"{kind}{bits}": _INTEGERS for kind in ("INT", "UINT") for bits in (8, 16, 32, 64)},
    **{f"FP{bits}": frozenset({int, float, type(None)}) for bits in (16, 32, 64)},
    "BYTES": frozenset({str, type(None)}),
}
_HOLDS = {bool: "a bool", int: "an integer", float: "a float", str: "text", list: "a list", dict: "an object"}
# Validation and scoring run on these threads, never on the event loop, so health probes and small requests are
# answered while a large request is scored. Validation holds the GIL: more threads would not score faster.
SCORING_THREADS = 4


@dataclass
class Exchange:
    """One prediction request as the server's HTTP edge follows it."""

    scoring: bool = False
    """Whether Steward's scoring began: anything that failed before failed while KServe decoded the client's body."""
    request_id: str = ""


EXCHANGE: ContextVar[Exchange | None] = ContextVar("steward_exchange", default=None)
"""The prediction request being answered, set by the HTTP edge for each one."""


class StewardModel(kserve.Model):  # type: ignore[misc]
    """A Steward bundle served over KServe's V1 and V2 (Open Inference) protocols."""

    def __init__(self, name: str, settings: Settings, families: Families, reporter: Reporter | None = None) -> None:
        super().__init__(name, return_response_headers=True)
        self.settings = settings
        self.families = families
        self.reporter = reporter
        self.reason = "the bundle has not been loaded yet"
        self.loaded: Loaded | None = None
        self.metrics: ModelMetrics | None = None
        """The served version's metrics, or, while not ready, the version asked for (or "unknown")."""
        self._scoring = ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="steward-scoring")

    def load(self) -> bool:
        """Load and check the bundle. Any failure keeps the model not-ready, with the reason on the readiness
        endpoints and in the log; the server stays up so the reason can be read."""
        settings = self.settings
        self.ready = False
        try:
            self.loaded = self._checked_bundle()
        except Exception as error:  # whatever is wrong with the bundle, the server stays up and says what
            self.reason = " ".join(str(scoring.refusal(error, settings.bundle_uri)).split())
            logger.error("model %s is not ready: %s", self.name, self.reason)
            version = settings.model_version or "unknown"
            self.metrics = ModelMetrics(self.families, self.name, version, settings.variant)
            self.metrics.ready.set(0)
            return False
        bundle, self.metrics = self.loaded.scorer.bundle, self.loaded.metrics
        self.metrics.ready.set(1)
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

    def _checked_bundle(self) -> Loaded:
        """The bundle loaded and checked for scoring, with the metrics and the prediction log fed by every
        request."""
        settings = self.settings
        scorer = scoring.load(
            settings.bundle_uri,
            digest=settings.bundle_digest,
            version=settings.model_version,
            allow_pickle=settings.allow_pickle,
            trusted_types=settings.trusted_types,
        )
        bundle = scorer.bundle
        metrics = ModelMetrics(self.families, self.name, bundle.version, settings.variant)
        metrics.attach(bundle)
        metrics.thresholds(settings.drift_thresholds)
        scorer.observers.append(Metered(metrics))
        if self.reporter is not None:
            scorer.observers.append(PredictionLog(self.reporter, settings.variant))
        return Loaded(scorer, metrics)

    def start(self) -> None:
        """KServe marks a model ready here; Steward's readiness is decided by load() alone."""

    async def healthy(self) -> bool:
        if not self.ready:
            raise ModelNotReady(self.name, self.reason)
        return True

    def count(self, protocol: str, code: int) -> None:
        """Count one answered prediction request by its status code, whichever layer answered it."""
        if self.metrics is not None:
            self.metrics.request(protocol, code)

    async def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: Mapping[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        loaded = self.loaded
        if loaded is None:
            raise ModelNotReady(self.name, self.reason)
        started = time.perf_counter()
        identifier, replaced = request_id(headers or {}, payload)
        exchange = EXCHANGE.get()
        if exchange is not None:
            exchange.scoring, exchange.request_id = True, identifier
        if response_headers is not None:
            response_headers.update(
                {
                    "x-request-id": identifier,
                    "x-steward-model-version": loaded.scorer.bundle.version,
                    "x-steward-variant": self.settings.variant,
                }
            )
            if replaced:
                response_headers["x-steward-request-id-replaced"] = replaced
        answer = asyncio.get_running_loop().run_in_executor(
            self._scoring, self._score, loaded, payload, identifier, started
        )
        return await answer

    def _score(
        self, loaded: Loaded, payload: dict[str, Any] | InferRequest, identifier: str, started: float
    ) -> dict[str, Any] | InferResponse:
        """Validate and score one request, on a scoring thread: all its rows, or none if one is rejected."""
        scorer = loaded.scorer
        checked = check_request(scorer.validator, payload, self.settings.max_rows)
        scored = scorer.score(checked, request_id=identifier, started=started, all_or_none=True)
        if scored.refused:
            raise InvalidInput(_explain(checked))
        if isinstance(payload, InferRequest):
            return _v2_response(self.name, scorer.bundle, identifier, scored.predictions, scored.probabilities)
        return _v1_response(scorer.bundle, scored.predictions, scored.probabilities)


@dataclass(frozen=True)
class Loaded:
    """A bundle that passed its checks, with what serving it needs."""

    scorer: scoring.Scorer
    """Scores every request, feeding the metrics and the prediction log."""
    metrics: ModelMetrics


def check_request(validator: Validator, payload: dict[str, Any] | InferRequest, max_rows: int) -> Checked:
    """Validate a request's rows: V1 records or rows, or V2 inputs of one column each. More than `max_rows` rows
    are refused before any is validated."""
    if isinstance(payload, InferRequest):
        columns, rows = _v2_columns(payload, max_rows)
        return validator.check_columns(columns, rows)
    if isinstance(payload, bytes | str):
        raise InvalidInput("the request body must be JSON, sent with content-type: application/json")
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('expected a JSON object with "instances": a list of records or rows')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list of records or rows')
    _within(len(instances), max_rows)
    return validator.check_records(instances)


def _v2_columns(payload: InferRequest, max_rows: int) -> tuple[dict[str, list[Any]], int]:
    """A V2 request's inputs as columns, each checked against its shape and datatype, and the number of rows."""
    columns: dict[str, list[Any]] = {}
    rows: int | None = None
    for tensor in payload.inputs:
        name = tensor.name
        if name in columns:
            sent = sum(other.name == name for other in payload.inputs)
            raise InvalidInput(f"input '{name}' is sent {sent} times: send each feature once")
        shape = list(tensor.shape)
        if len(shape) == 2 and shape[1] == 1:
            shape = shape[:1]
        if len(shape) != 1:
            raise InvalidInput(f"input '{name}': expected shape [rows] or [rows, 1], got {tensor.shape}")
        _within(shape[0], max_rows)
        data = tensor.data
        values = data.tolist() if isinstance(data, np.ndarray) else list(data)
        if len(values) != shape[0]:
            raise InvalidInput(f"input '{name}': shape says {shape[0]} values, data has {len(values)}")
        _check_datatype(name, tensor.datatype, values)
        columns[name] = values
        rows = shape[0] if rows is None else rows
    if rows is None:
        raise InvalidInput("the request has no inputs: send one named input per feature")
    if rows == 0:
        raise InvalidInput("the request has no rows: send each input with at least one value")
    return columns, rows


def _within(rows: int, max_rows: int) -> None:
    if rows > max_rows:
        raise InvalidInput(
            f"the request has {rows} rows; at most {max_rows} are scored per request (--max_rows, "
            "STEWARD_MAX_ROWS): split it, or score it as a batch"
        )


def _check_datatype(name: str, datatype: str, values: list[Any]) -> None:
    allowed = _DATATYPES.get(datatype)
    if allowed is None:
        raise InvalidInput(
            f"input '{name}': datatype {datatype} is not an Open Inference datatype ({', '.join(_DATATYPES)})"
        )
    if not {type(value) for value in values} <= allowed:
        row = next(row for row, value in enumerate(values) if type(value) not in allowed)
        holds = _HOLDS.get(type(values[row]), type(values[row]).__name__)
        raise InvalidInput(f"input '{name}': datatype {datatype}, but row {row} holds {holds}")
    if datatype.startswith("UINT"):
        negative = [row for row, value in enumerate(values) if value is not None and value < 0]
        if negative:
            raise InvalidInput(f"input '{name}': datatype {datatype}, but row {negative[0]} holds a negative number")


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


def request_id(headers: Mapping[str, str], payload: dict[str, Any] | InferRequest) -> tuple[str, str]:
    """The id a request is answered and reported under (x-request-id, else ce-id, else a V2 body's id, else a new
    one), and why the id it came with was replaced by a new one ("" when it was not)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    sent = [("x-request-id", lowered.get("x-request-id")), ("ce-id", lowered.get("ce-id"))]
    if isinstance(payload, InferRequest):
        sent.append(("the V2 id", payload.id))
    for source, value in sent:
        if value:
            if REQUEST_ID.fullmatch(str(value)):
                return str(value), ""
            return uuid.uuid4().hex, (
                f"{source} was not used: request ids are 1 to {MAX_REQUEST_ID} characters of "
                f"{REQUEST_ID_CHARACTERS}; x-request-id holds the one used"
            )
    return uuid.uuid4().hex, ""


def _explain(checked: Checked) -> str:
    problems = checked.problems
    shown = "; ".join(str(problem) for problem in problems[:MAX_REPORTED_PROBLEMS])
    more = f" (and {len(problems) - MAX_REPORTED_PROBLEMS} more)" if len(problems) > MAX_REPORTED_PROBLEMS else ""
    return f"invalid request: {shown}{more}"
