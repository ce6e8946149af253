"""What the monitor stores: prediction events and outcome labels, parsed from what clients send, with an error
that names the field for anything malformed."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_ID = 256
"""Longest request id, model, namespace or version accepted."""
VARIANTS = frozenset({"incumbent", "challenger", "shadow"})
Label = str | float | bool
"""A prediction or an outcome: a class label, or a value for regression."""


class RecordError(ValueError):
    """A record that cannot be stored; the message names the field, e.g. `predictions[3].requestId: required`."""


@dataclass(frozen=True)
class Prediction:
    """One version's answer to one request (one row of it). A request scored by the incumbent and, mirrored, by
    a shadow challenger is two predictions with the same request id: the pair is what shadow comparisons use."""

    namespace: str
    model: str
    version: str
    request_id: str
    time: datetime
    prediction: Label
    variant: str = "incumbent"
    score: float | None = None
    """Binary classifiers: the positive-class probability."""
    features: Mapping[str, Any] | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What makes it the same event when it is sent again."""
        return self.namespace, self.model, self.version, self.request_id


@dataclass(frozen=True)
class Outcome:
    """The true label of a request, known later (a churn label after 90 days)."""

    namespace: str
    model: str
    request_id: str
    label: Label
    time: datetime
    """When the outcome became known."""

    @property
    def key(self) -> tuple[str, str, str]:
        return self.namespace, self.model, self.request_id


def predictions(body: Any, received: datetime) -> list[Prediction]:
    """The predictions of a JSON body: {"predictions": [...]} or a bare list of objects with requestId, model,
    version and prediction, and optionally namespace, variant, score, features and time (RFC 3339)."""
    items = _items(body, "predictions")
    return [_prediction(item, f"predictions[{index}]", received) for index, item in enumerate(items)]


def outcomes(body: Any, received: datetime, *, namespace: str = "", model: str | None = None) -> list[Outcome]:
    """The outcomes of a JSON body: {"outcomes": [...]} or a bare list of objects with requestId and label, and
    model (unless given for all), optionally namespace and time."""
    items = _items(body, "outcomes")
    return [_outcome(item, f"outcomes[{index}]", received, namespace, model) for index, item in enumerate(items)]


def outcome_table(data: bytes, form: str, received: datetime, *, namespace: str, model: str | None) -> list[Outcome]:
    """Outcomes from an uploaded CSV or Parquet file with columns request_id and label (and optionally model,
    namespace, time)."""
    import pandas as pd  # noqa: PLC0415 -- only uploads need it

    try:
        frame = pd.read_parquet(io.BytesIO(data)) if form == "parquet" else pd.read_csv(io.BytesIO(data))
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise RecordError(f"the upload is not a readable {form} file: {error}") from None
    missing = [column for column in ("request_id", "label") if column not in frame.columns]
    if missing:
        raise RecordError(
            f"the upload has no column {', '.join(missing)}; columns: {', '.join(map(str, frame.columns))}"
        )
    renamed = frame.rename(columns={"request_id": "requestId"})
    rows = [{key: value for key, value in row.items() if not _missing(value)} for row in renamed.to_dict("records")]
    return [_outcome(row, f"row {index + 1}", received, namespace, model) for index, row in enumerate(rows)]


def cloud_event(
    headers: Mapping[str, str], body: Any, received: datetime, *, namespace: str, model: str, version: str
) -> list[Prediction]:
    """The predictions in a KServe payload-logger CloudEvent (binary mode: ce-* headers, the payload as body).
    A response event gives one prediction per row, keyed by ce-id (`<ce-id>-<row>` for several rows, as the
    predictor names them); a request event gives none. The namespace, model and version are the ones the
    logger's URL names, defaulting to ce-namespace and ce-inferenceservicename."""
    lowered = {key.lower(): value for key, value in headers.items()}
    kind = lowered.get("ce-type", "")
    request_id = lowered.get("ce-id", "")
    if not kind or not request_id:
        raise RecordError("not a CloudEvent: send ce-type and ce-id headers (binary content mode)")
    if not kind.endswith(".response"):
        return []
    if not version:
        raise RecordError("name the version in the logger's URL: /v1/events?namespace=N&model=M&version=V")
    if not isinstance(body, Mapping):
        raise RecordError("the response payload must be a JSON object")
    answers, scores = _answers(body)
    several = len(answers) > 1
    common = {
        "namespace": namespace or lowered.get("ce-namespace", ""),
        "model": model or lowered.get("ce-inferenceservicename", ""),
        "version": version,
        "time": lowered.get("ce-time") or received,
    }
    items = [
        {
            **common,
            "requestId": f"{request_id}-{row}" if several else request_id,
            "prediction": answer,
            **({"score": scores[row]} if scores is not None else {}),
        }
        for row, answer in enumerate(answers)
    ]
    if not items:
        raise RecordError("the response payload holds no predictions")
    return predictions(items, received)


def _answers(body: Mapping[str, Any]) -> tuple[list[Any], list[float] | None]:
    """Predictions and, for a binary classifier, positive-class probabilities from a V1 or V2 response."""
    if "predictions" in body:
        answers = list(body["predictions"])
        probabilities, classes = body.get("probabilities"), body.get("classes")
        if isinstance(probabilities, list) and isinstance(classes, list) and len(classes) == 2:
            return answers, [float(row[1]) for row in probabilities]
        return answers, None
    outputs = {item.get("name"): item for item in body.get("outputs", []) if isinstance(item, Mapping)}
    if "predictions" not in outputs:
        raise RecordError('expected a V1 response with "predictions" or a V2 one with a "predictions" output')
    answers = list(outputs["predictions"].get("data", []))
    probabilities = sorted(name for name in outputs if str(name).startswith("probability_"))
    if len(probabilities) == 2:
        return answers, [float(value) for value in outputs[probabilities[1]].get("data", [])]
    return answers, None


# --- one record ------------------------------------------------------------------------------------------------


def _items(body: Any, name: str) -> list[Any]:
    if isinstance(body, Mapping):
        if name not in body:
            raise RecordError(f'expected a JSON list, or an object with "{name}"')
        body = body[name]
    if not isinstance(body, list):
        raise RecordError(f"{name}: expected a list")
    if not body:
        raise RecordError(f"{name}: the list is empty")
    return body


def _prediction(item: Any, where: str, received: datetime) -> Prediction:
    fields = _fields(item, where)
    variant = _text(fields, "variant", where, default="incumbent")
    if variant not in VARIANTS:
        raise RecordError(f"{where}.variant: expected one of {', '.join(sorted(VARIANTS))}, got {variant!r}")
    score = fields.get("score")
    if score is not None and (not _number(score) or not 0 <= score <= 1):
        raise RecordError(f"{where}.score: expected a probability between 0 and 1, got {score!r}")
    features = fields.get("features")
    if features is not None and not isinstance(features, Mapping):
        raise RecordError(f"{where}.features: expected an object of feature values")
    return Prediction(
        namespace=_text(fields, "namespace", where, default=""),
        model=_text(fields, "model", where),
        version=_text(fields, "version", where),
        request_id=_text(fields, "requestId", where),
        time=_time(fields, where, received),
        prediction=_label(fields, "prediction", where),
        variant=variant,
        score=None if score is None else float(score),
        features=features,
    )


def _outcome(item: Any, where: str, received: datetime, namespace: str, model: str | None) -> Outcome:
    fields = _fields(item, where)
    return Outcome(
        namespace=_text(fields, "namespace", where, default=namespace),
        model=_text(fields, "model", where, default=model),
        request_id=_text(fields, "requestId", where),
        label=_label(fields, "label", where),
        time=_time(fields, where, received),
    )


def _fields(item: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise RecordError(f"{where}: expected an object")
    return item


def _text(fields: Mapping[str, Any], name: str, where: str, default: str | None = None) -> str:
    value = fields.get(name, default)
    if value is None:
        raise RecordError(f"{where}.{name}: required")
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or (not value and default is None) or len(value) > MAX_ID:
        raise RecordError(f"{where}.{name}: expected text of 1 to {MAX_ID} characters, got {value!r}")
    return value


def _label(fields: Mapping[str, Any], name: str, where: str) -> Label:
    value = fields.get(name)
    if value is None:
        raise RecordError(f"{where}.{name}: required")
    if isinstance(value, bool | str):
        return value
    if _number(value):
        return float(value)
    raise RecordError(f"{where}.{name}: expected a class label or a finite number, got {value!r}")


def _time(fields: Mapping[str, Any], where: str, received: datetime) -> datetime:
    value = fields.get("time")
    if value is None:
        return received
    try:
        return moment(value)
    except RecordError as error:
        raise RecordError(f"{where}.time: {error}") from None


def moment(value: Any) -> datetime:
    """An RFC 3339 time (or an aware datetime), in UTC."""
    if isinstance(value, datetime):
        found = value
    else:
        try:
            found = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise RecordError(f"expected an RFC 3339 time, got {value!r}") from None
    if found.tzinfo is None:
        raise RecordError(f"give a time zone (2026-11-25T10:00:00Z), got {value!r}")
    return found.astimezone(UTC)


def class_label(value: Label | None) -> str:
    """A label as a class name, so 1, 1.0 and "1" are the same class."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
