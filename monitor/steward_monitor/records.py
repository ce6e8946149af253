"""What the monitor stores: prediction events and outcome labels, parsed from what clients send. Each record is
admitted or refused on its own, with a reason that names the field; only a request that cannot be read at all is
refused whole."""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from steward_contracts import metrics

MAX_ID = 256
"""Longest request id, model, namespace or version accepted."""
MAX_COLUMNS = 1_000
"""Most columns an uploaded table may have; only request_id, label, model, namespace and time are read."""
TABLE_COLUMNS = ("request_id", "label", "model", "namespace", "time")
CHUNK_ROWS = 10_000
"""Rows of an upload decoded at a time."""
SHOWN = 80
"""Characters of a refused value quoted back in a reason."""
VARIANTS = frozenset(metrics.VARIANTS)
Label = str | float | bool
"""A prediction or an outcome: a class label, or a value for regression."""


class RecordError(ValueError):
    """What cannot be stored; the message names the field, e.g. `predictions[3].requestId: required`."""


class TooLargeError(RecordError):
    """A request beyond a size limit (records, rows or columns); the message names the limit."""


@dataclass(frozen=True)
class Admission:
    """What the monitor admits besides well-formed records: times at most `skew` ahead of `received` and at most
    `retention` before it (older ones would be purged at once), at most `max_records` records a request, and, when the
    sender's token is for one model (`scope`: namespace, model), that model's predictions only."""

    received: datetime
    retention: timedelta = timedelta(days=180)
    skew: timedelta = timedelta(minutes=5)
    max_records: int = 100_000
    scope: tuple[str, str] | None = None


@dataclass(frozen=True)
class Refusal:
    """A record that was not stored: its position in the request (0 for the first) and why."""

    index: int
    reason: str


Record = TypeVar("Record")


@dataclass
class Batch(Generic[Record]):
    """The records of one request that can be stored, and the refusals of those that cannot."""

    records: list[Record] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)


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


def predictions(body: Any, admission: Admission) -> Batch[Prediction]:
    """The predictions of a JSON body: {"predictions": [...]} or a bare list of objects with requestId, model,
    version and prediction, and optionally namespace, variant, score, features and time (RFC 3339)."""
    items = _items(body, "predictions", admission.max_records)
    return _admit(items, lambda index: f"predictions[{index}]", lambda item, where: _prediction(item, where, admission))


def outcomes(body: Any, admission: Admission, *, namespace: str = "", model: str | None = None) -> Batch[Outcome]:
    """The outcomes of a JSON body: {"outcomes": [...]} or a bare list of objects with requestId and label, and
    model (unless given for all), optionally namespace and time."""
    items = _items(body, "outcomes", admission.max_records)
    return _admit(
        items,
        lambda index: f"outcomes[{index}]",
        lambda item, where: _outcome(item, where, admission, namespace, model),
    )


def outcome_table(data: bytes, form: str, admission: Admission, *, namespace: str, model: str | None) -> Batch[Outcome]:
    """Outcomes from an uploaded CSV or Parquet file with columns request_id and label (and optionally model,
    namespace, time). The rows and columns are counted before the table is decoded (a Parquet file from its
    metadata), and it is decoded a chunk at a time."""
    chunks = _parquet_rows(data, admission.max_records) if form == "parquet" else _csv_rows(data, admission.max_records)
    found: Batch[Outcome] = Batch()
    offset = 0
    for rows in chunks:
        _admit(
            rows,
            lambda index: f"row {index + 1}",
            lambda row, where: _outcome(row, where, admission, namespace, model),
            into=found,
            start=offset,
        )
        offset += len(rows)
    return found


def cloud_event(
    headers: Mapping[str, str], body: Any, admission: Admission, *, namespace: str, model: str, version: str
) -> Batch[Prediction]:
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
        return Batch()
    if not version:
        raise RecordError("name the version in the logger's URL: /v1/events?namespace=N&model=M&version=V")
    if not isinstance(body, Mapping):
        raise RecordError("the response payload must be a JSON object")
    try:
        answers, scores = _answers(body)
    except RecordError:
        raise
    except (TypeError, ValueError, KeyError, IndexError) as error:
        raise RecordError(f"the response payload is not a V1 or V2 response: {error!r}") from None
    if scores is not None and len(scores) != len(answers):
        raise RecordError(f"the response payload has {len(scores)} probabilities for {len(answers)} predictions")
    several = len(answers) > 1
    common = {
        "namespace": namespace or lowered.get("ce-namespace", ""),
        "model": model or lowered.get("ce-inferenceservicename", ""),
        "version": version,
        "time": lowered.get("ce-time") or admission.received,
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
    return predictions(items, admission)


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


# --- reading tables --------------------------------------------------------------------------------------------


def _parquet_rows(data: bytes, most: int) -> Iterator[list[dict[str, Any]]]:
    import pyarrow.parquet as pq  # noqa: PLC0415 -- only uploads need it

    with _reading("parquet"):
        table = pq.ParquetFile(io.BytesIO(data))
        _check_size(table.metadata.num_rows, table.metadata.num_columns, most)
        names = _columns(table.schema_arrow.names)
        read = 0
        for batch in table.iter_batches(batch_size=CHUNK_ROWS, columns=names):
            read += batch.num_rows
            _check_size(read, len(names), most, so_far=True)  # The metadata may understate what the pages hold.
            yield [_row(row) for row in batch.to_pylist()]


def _csv_rows(data: bytes, most: int) -> Iterator[list[dict[str, Any]]]:
    import pandas as pd  # noqa: PLC0415 -- only uploads need it

    with _reading("csv"):
        # Counted with the csv module: pandas takes a minute over the header of 100,000 columns.
        header = next(csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")), [])
        _check_size(0, len(header), most)
        names = _columns(header)
        read = 0
        for frame in pd.read_csv(io.BytesIO(data), usecols=names, chunksize=CHUNK_ROWS):
            read += len(frame)
            _check_size(read, len(header), most, so_far=True)
            yield [_row(row) for row in frame.to_dict("records")]


@contextlib.contextmanager
def _reading(form: str) -> Iterator[None]:
    try:
        yield
    except RecordError:
        raise
    except Exception as error:  # Whatever a parser makes of a damaged file, the upload is unreadable, not a crash.
        raise RecordError(f"the upload is not a readable {form} file: {error}") from None


def _check_size(rows: int, columns: int, most: int, *, so_far: bool = False) -> None:
    if columns > MAX_COLUMNS:
        raise TooLargeError(f"the upload has {columns:,} columns; the monitor reads tables of at most {MAX_COLUMNS:,}")
    if rows > most:
        counted = f"more than {most:,}" if so_far else f"{rows:,}"
        raise TooLargeError(f"the upload has {counted} rows; the monitor takes at most {most:,} a request: split it")


def _columns(names: list[str]) -> list[str]:
    """The columns to read; an error listing those present when request_id or label is not among them."""
    missing = [column for column in ("request_id", "label") if column not in names]
    if missing:
        raise RecordError(f"the upload has no column {', '.join(missing)}; columns: {_cut(', '.join(names))}")
    return [name for name in TABLE_COLUMNS if name in names]


def _row(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A table row as an outcome's fields: missing values left out, request_id named as in JSON."""
    return {
        "requestId" if key == "request_id" else str(key): value for key, value in row.items() if not _missing(value)
    }


# --- one record ------------------------------------------------------------------------------------------------


def _items(body: Any, name: str, most: int) -> list[Any]:
    if isinstance(body, Mapping):
        if name not in body:
            raise RecordError(f'expected a JSON list, or an object with "{name}"')
        body = body[name]
    if not isinstance(body, list):
        raise RecordError(f"{name}: expected a list")
    if not body:
        raise RecordError(f"{name}: the list is empty")
    if len(body) > most:
        raise TooLargeError(f"{name}: {len(body):,} records; the monitor takes at most {most:,} a request: split them")
    return body


def _admit(
    items: list[Any],
    where: Callable[[int], str],
    parse: Callable[[Any, str], Record],
    *,
    into: Batch[Record] | None = None,
    start: int = 0,
) -> Batch[Record]:
    """Each item parsed on its own: a record, or a refusal that says why."""
    found = into if into is not None else Batch()
    for index, item in enumerate(items, start):
        try:
            found.records.append(parse(item, where(index)))
        except RecordError as error:
            found.refusals.append(Refusal(index, str(error)))
    return found


def _prediction(item: Any, where: str, admission: Admission) -> Prediction:
    fields = _fields(item, where)
    variant = _text(fields, "variant", where, default="incumbent")
    if variant not in VARIANTS:
        raise RecordError(f"{where}.variant: expected one of {', '.join(sorted(VARIANTS))}, got {_shown(variant)}")
    score = fields.get("score")
    if score is not None and (not _number(score) or not 0 <= score <= 1):
        raise RecordError(f"{where}.score: expected a probability between 0 and 1, got {_shown(score)}")
    features = fields.get("features")
    if features is not None and not isinstance(features, Mapping):
        raise RecordError(f"{where}.features: expected an object of feature values")
    namespace, model = _text(fields, "namespace", where, default=""), _text(fields, "model", where)
    if admission.scope is not None and (namespace, model) != admission.scope:
        raise RecordError(
            f"{where}: the token is for model {'/'.join(admission.scope)}, not {_shown(f'{namespace}/{model}')}"
        )
    return Prediction(
        namespace=namespace,
        model=model,
        version=_text(fields, "version", where),
        request_id=_text(fields, "requestId", where),
        time=_time(fields, where, admission),
        prediction=_label(fields, "prediction", where),
        variant=variant,
        score=None if score is None else float(score),
        features=features,
    )


def _outcome(item: Any, where: str, admission: Admission, namespace: str, model: str | None) -> Outcome:
    fields = _fields(item, where)
    return Outcome(
        namespace=_text(fields, "namespace", where, default=namespace),
        model=_text(fields, "model", where, default=model),
        request_id=_text(fields, "requestId", where),
        label=_label(fields, "label", where),
        time=_time(fields, where, admission),
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
        raise RecordError(f"{where}.{name}: expected text of 1 to {MAX_ID} characters, got {_shown(value)}")
    if "\x00" in value or not _encodable(value):
        # PostgreSQL stores no NUL in text, and neither store takes a lone surrogate: refused here, such a value
        # would fail the whole shared transaction instead.
        raise RecordError(
            f"{where}.{name}: expected text without NUL characters or lone surrogates, got {_shown(value)}"
        )
    return value


def _label(fields: Mapping[str, Any], name: str, where: str) -> Label:
    value = fields.get(name)
    if value is None:
        raise RecordError(f"{where}.{name}: required")
    if isinstance(value, bool | str):
        return value
    if _number(value):
        return float(value)
    raise RecordError(f"{where}.{name}: expected a class label or a finite number, got {_shown(value)}")


def _time(fields: Mapping[str, Any], where: str, admission: Admission) -> datetime:
    value = fields.get("time")
    if value is None:
        return admission.received
    try:
        found = moment(value)
    except RecordError as error:
        raise RecordError(f"{where}.time: {error}") from None
    if found > admission.received + admission.skew:
        raise RecordError(
            f"{where}.time: {found.isoformat()} is in the future: the monitor takes times at most "
            f"{_span(admission.skew)} ahead of its clock ({admission.received.isoformat()})"
        )
    if found < admission.received - admission.retention:
        raise RecordError(
            f"{where}.time: {found.isoformat()} is older than the retention of {_span(admission.retention)} keeps"
        )
    return found


def moment(value: Any) -> datetime:
    """An RFC 3339 time (or an aware datetime), in UTC."""
    if isinstance(value, datetime):
        found = value
    else:
        try:
            found = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise RecordError(f"expected an RFC 3339 time, got {_shown(value)}") from None
    if found.tzinfo is None:
        raise RecordError(f"give a time zone (2026-11-25T10:00:00Z), got {_shown(value)}")
    try:
        return found.astimezone(UTC)
    except OverflowError:
        raise RecordError(f"{_shown(value)} is out of range in UTC") from None


def class_label(value: Label | None) -> str:
    """A label as a class name, so 1, 1.0 and "1" are the same class."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _shown(value: Any) -> str:
    """A value as quoted back in a reason: its repr, cut short when long."""
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text):,} characters)"


def _span(length: timedelta) -> str:
    days = length / timedelta(days=1)
    return f"{days:g} days" if days >= 1 else f"{length.total_seconds():g} s"


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _number(value: Any) -> bool:
    try:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # An integer beyond any float.
        return False


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
