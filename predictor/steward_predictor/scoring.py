"""Batch scoring: a model bundle applied to a file or table chunk by chunk, every row validated exactly as an
online request is, scores and rejects published whole or not at all."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import FrameType
from typing import Any, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from steward_predictor import datasets, parity
from steward_predictor.bundles import Bundle, BundleError, load_bundle
from steward_predictor.defaults import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_MAX_REJECT_FRACTION,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_REJECTED,
    EXIT_USAGE,
    IfExists,
)
from steward_predictor.schemas import Checked, FeatureSchema, Validator, Violation

# Column names of the scores (an --id-column follows ROW) and of the rejects (ROW, the id, the features, REASONS).
ROW = "row"
REQUEST_ID = "request_id"
MODEL_VERSION = "model_version"
BUNDLE_DIGEST = "bundle_digest"
SCORED_AT = "scored_at"
PREDICTION = "prediction"
PROBABILITY_PREFIX = "probability_"
REASONS = "reasons"

SCORED_AT_TYPE = pa.timestamp("us", tz="UTC")
# A text column with no rows: what most chunks, having no rejects, carry in each column of the rejects.
NO_TEXT = pa.array([], type=pa.string())

# glibc's mallopt parameters (malloc.h) and what a batch run sets them to: blocks up to the largest size glibc
# allows come from the heap rather than from mmap, and up to twice that may stay free on the heap for reuse.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


class UsageError(Exception):
    """The flags do not make a runnable job; nothing was read or written."""


class ParityError(Exception):
    """The bundle may not score: it no longer reproduces its golden examples."""


class RejectedError(Exception):
    """Too many rows failed validation; the output was not published."""

    def __init__(self, message: str, summary: Summary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class Settings:
    """What one batch run reads, writes and tolerates."""

    input: datasets.Location
    output: datasets.Location
    rejects: datasets.Location
    id_column: str | None = None
    """An input column copied to every scored and rejected row (a customer id, say)."""
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION
    if_exists: IfExists = "fail"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Prefix of every request id: <run id>-<row>."""


@dataclass(frozen=True)
class ScoredChunk:
    """One chunk's scores, its rejects with their reasons, and the problems that were only counted."""

    scores: pa.Table
    rejects: pa.Table
    rows: int
    counted: Counter[str]

    @property
    def rejected(self) -> int:
        return int(self.rejects.num_rows)


class Scorer:
    """Scores chunks of input rows with one bundle: the online validation first, then the pipeline, whose
    feature steps run once per chunk for both the prediction and the class probabilities."""

    def __init__(self, bundle: Bundle, *, run_id: str, id_column: str | None = None) -> None:
        self.bundle = bundle
        self.validator = Validator(bundle.schema)
        self.features = bundle.schema.names
        self.run_id = run_id
        self.id_column = id_column
        metadata = bundle.metadata
        self.classes: list[Any] | None = metadata.classes if metadata.task == "classification" else None
        self._prediction_type = _prediction_type(self.classes)
        probabilities = [f"{PROBABILITY_PREFIX}{label}" for label in self.classes or []]
        kept = [id_column] if id_column else []
        self.columns = [ROW, *kept, REQUEST_ID, MODEL_VERSION, BUNDLE_DIGEST, SCORED_AT, PREDICTION, *probabilities]
        """The columns of the scores, in order."""
        self._reject_features = [name for name in self.features if name != id_column]
        self.reject_columns = [ROW, *kept, *self._reject_features, REASONS]
        """The columns of the rejects, in order."""
        clashes = sorted({name for name in self.columns if self.columns.count(name) > 1})
        if clashes:
            raise UsageError(f"--id-column {id_column} would clash with the output column of the same name")
        self._aside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steward-ids")
        self._constant_columns: tuple[pa.Array, pa.Array] | None = None

    def check(self, frame: pd.DataFrame) -> Checked:
        """Validate `frame`. Rows are numbered within it, so a chunk can be checked before the ones ahead of it
        are scored."""
        present = [name for name in self.features if name in frame.columns]
        return self.validator.check_columns({name: _column(frame[name]) for name in present}, len(frame))

    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, Checked]:
        """`frame` checked, with only what scoring it still needs kept: the id column, and the input columns
        too when rows were rejected, as the rejects carry their values. The rest is let go before the chunk's
        turn comes."""
        checked = self.check(frame)
        if checked.rejected:
            return frame, checked
        return frame[[self.id_column] if self.id_column else []], checked

    def score(
        self,
        frame: pd.DataFrame,
        first_row: int = 0,
        scored_at: datetime | None = None,
        checked: Checked | None = None,
    ) -> ScoredChunk:
        """Validate and score `frame`, whose first row is input row `first_row`. With `checked`, its validation
        is done already, and `frame` may be what `prepare` kept of it."""
        rows = len(frame)
        if checked is None:
            checked = self.check(frame)
        accepted = checked.accepted.astype(np.int64, copy=False)
        row_numbers = pa.array(first_row + accepted, type=pa.int64())
        # Arrow builds the request ids without the GIL, on another core while the pipeline predicts.
        request_ids = self._aside.submit(_request_ids, self.run_id, row_numbers)
        if len(accepted):
            prediction, probabilities = self.predict(checked.frame)
        else:
            prediction = np.array([], dtype=object)
            probabilities = np.empty((0, len(self.classes or [])))
        moment = scored_at or datetime.now(UTC)
        columns: list[pa.Array] = [row_numbers]
        if self.id_column:
            columns.append(_copied(frame[self.id_column].to_numpy()[accepted]))
        count = len(accepted)
        version, digest = self._constants(count)
        columns += [
            request_ids.result(),
            version,
            digest,
            pa.repeat(pa.scalar(moment, SCORED_AT_TYPE), count),
            pa.array(prediction, type=self._prediction_type),
        ]
        if self.classes is not None and probabilities is not None:
            columns += [pa.array(np.ascontiguousarray(probabilities[:, index])) for index in range(len(self.classes))]
        return ScoredChunk(
            scores=pa.Table.from_arrays(columns, names=self.columns),
            rejects=self._rejects(frame, first_row, checked.rejected),
            rows=rows,
            counted=Counter(violation.problem for violation in checked.counted),
        )

    def _constants(self, count: int) -> tuple[pa.Array, pa.Array]:
        """The model version and bundle digest columns for `count` rows: slices of columns built once for the
        largest chunk, as every chunk carries the same two values on every row."""
        if self._constant_columns is None or len(self._constant_columns[0]) < count:
            self._constant_columns = (
                pa.repeat(pa.scalar(self.bundle.metadata.model_version, pa.string()), count),
                pa.repeat(pa.scalar(self.bundle.digest, pa.string()), count),
            )
        version, digest = self._constant_columns
        return version.slice(0, count), digest.slice(0, count)

    def predict(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and, for classifiers, class probabilities, for rows already validated and typed."""
        prediction, probabilities = self.bundle.predict(frame)
        if probabilities is None:
            return prediction.astype(np.float64, copy=False), None
        return prediction, probabilities

    def _rejects(self, frame: pd.DataFrame, first_row: int, rejected: dict[int, list[Violation]]) -> pa.Table:
        """The rejected rows with their values as text, whatever their type, so that a chunk's rejects always
        fit the columns of the first chunk's."""
        positions = np.array(sorted(rejected), dtype=np.int64)
        columns: list[pa.Array] = [pa.array(first_row + positions, type=pa.int64())]
        if self.id_column:
            columns.append(_copied(frame[self.id_column].to_numpy()[positions]))
        for name in self._reject_features:
            if not rejected:
                # Most chunks: no rows, and no need to look at the input.
                columns.append(NO_TEXT)
                continue
            values = frame[name].to_numpy()[positions] if name in frame.columns else [None] * len(positions)
            columns.append(pa.array([_as_text(value) for value in values], type=pa.string()))
        # Violations number rows within the chunk; the rejects speak of rows in the input.
        reasons = [
            "; ".join(
                str(replace(violation, row=first_row + position) if violation.row is not None else violation)
                for violation in rejected[position]
            )
            for position in positions.tolist()
        ]
        columns.append(pa.array(reasons, type=pa.string()))
        return pa.Table.from_arrays(columns, names=self.reject_columns)


@dataclass
class Summary:
    """What a run did, printed as one line of JSON on stdout."""

    run_id: str
    model_version: str
    digest: str | None
    input: str
    output: str
    rejects: str
    rows_read: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    counted: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    published: bool = False

    def add(self, chunk: ScoredChunk) -> None:
        self.rows_read += chunk.rows
        self.rows_scored += chunk.rows - chunk.rejected
        self.rows_rejected += chunk.rejected
        self.counted.update(chunk.counted)

    @property
    def rejected_fraction(self) -> float:
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> str:
        return json.dumps(
            {
                "runId": self.run_id,
                "rowsRead": self.rows_read,
                "rowsScored": self.rows_scored,
                "rowsRejected": self.rows_rejected,
                "rejectedFraction": round(self.rejected_fraction, 6),
                "counted": dict(sorted(self.counted.items())),
                "seconds": round(self.seconds, 3),
                "rowsPerSecond": round(self.rows_per_second, 1),
                "input": self.input,
                "output": self.output,
                "rejects": self.rejects,
                "published": self.published,
                "modelVersion": self.model_version,
                "digest": self.digest,
            }
        )


class Progress:
    """Rows done and the rate: a bar on a terminal, one line per chunk otherwise (job logs, CI)."""

    def __init__(self, stream: TextIO, total: int | None = None) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._bar: Any = None
        if stream.isatty():
            self._bar = tqdm(total=total, unit=" rows", unit_scale=True, file=stream, dynamic_ncols=True)

    def advance(self, chunk: ScoredChunk, summary: Summary) -> None:
        if self._bar is not None:
            self._bar.update(chunk.rows)
            self._bar.set_postfix(rejected=summary.rows_rejected, refresh=False)
            return
        seconds = time.monotonic() - self._started
        rate = summary.rows_read / seconds if seconds > 0 else 0.0
        print(
            f"steward-predict: {summary.rows_read:,} rows read, {summary.rows_rejected:,} rejected, {rate:,.0f} rows/s",
            file=self._stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def prepare(transaction: datasets.Transaction, settings: Settings) -> list[str]:
    """Checks that need no bundle, before anything is loaded or written; returns the input's columns."""
    named = {"--input": settings.input, "--output": settings.output, "--rejects": settings.rejects}
    for first, second in (("--output", "--input"), ("--rejects", "--input"), ("--rejects", "--output")):
        if named[first].same_as(named[second]):
            raise UsageError(f"{first} and {second} name the same place: {named[first].display}")
    if settings.chunk_rows < 1:
        raise UsageError(f"--chunk-rows must be at least 1, not {settings.chunk_rows}")
    if not 0.0 <= settings.max_reject_fraction <= 1.0:
        raise UsageError(f"--max-reject-fraction must be between 0 and 1, not {settings.max_reject_fraction}")
    columns = transaction.columns(settings.input)
    if settings.id_column is not None and settings.id_column not in columns:
        raise UsageError(f"--id-column {settings.id_column} is not a column of {settings.input.display}")
    if settings.if_exists == "fail" and transaction.exists(settings.output):
        raise datasets.LocationError(
            f"{settings.output.display} already exists and was left as it is: pass --if-exists replace to "
            "replace it, or --if-exists append to add the new scores to it"
        )
    return columns


def score_batch(
    transaction: datasets.Transaction,
    settings: Settings,
    bundle: Bundle,
    columns: Sequence[str],
    progress: TextIO | None = None,
) -> Summary:
    """Score every row of the input, write scores and rejects, and publish them: the scores only if no more
    than the allowed fraction of rows was rejected (else `RejectedError`), the rejects either way."""
    scorer = Scorer(bundle, run_id=settings.run_id, id_column=settings.id_column)
    schema = bundle.schema
    _refuse_missing_columns(settings.input, schema, columns)
    rejects_mode: IfExists = "append" if settings.if_exists == "append" else "replace"
    _check_appendable(transaction, settings.output, settings.if_exists, scorer.columns)
    _check_appendable(transaction, settings.rejects, rejects_mode, scorer.reject_columns)
    stream = progress or sys.stderr
    ignored = [name for name in columns if name not in {*schema.names, settings.id_column}]
    if ignored:
        print(f"steward-predict: ignoring {len(ignored)} input columns the model does not use", file=stream)

    summary = Summary(
        run_id=settings.run_id,
        model_version=bundle.metadata.model_version,
        digest=bundle.digest,
        input=settings.input.display,
        output=settings.output.display,
        rejects=settings.rejects.display,
    )
    started = time.monotonic()
    output = transaction.writer(settings.output, settings.if_exists)
    rejects = transaction.writer(settings.rejects, rejects_mode)
    wanted = list(dict.fromkeys(name for name in [settings.id_column, *schema.names] if name and name in columns))
    chunks = transaction.read(
        settings.input,
        wanted,
        chunk_rows=settings.chunk_rows,
        # Validation needs no row numbers: files have it done where the chunk is read, a chunk ahead.
        prepare=scorer.prepare,
        numbers=[feature.name for feature in schema.features if feature.kind == "numeric"],
        texts=[
            *(feature.name for feature in schema.features if feature.kind == "categorical"),
            *([settings.id_column] if settings.id_column else []),
        ],
        categories=[
            feature.name
            for feature in schema.features
            if feature.categories is not None and feature.name != settings.id_column
        ],
    )
    bar = Progress(stream, transaction.count(settings.input))
    try:
        for frame, checked in chunks:
            chunk = scorer.score(frame, summary.rows_read, checked=checked)
            output.write(chunk.scores)
            rejects.write(chunk.rejects)
            summary.add(chunk)
            bar.advance(chunk, summary)
    finally:
        bar.close()
    too_many = summary.rows_rejected > settings.max_reject_fraction * summary.rows_read
    if too_many:
        output.discard()
    else:
        output.publish()
    rejects.publish()
    transaction.commit()
    summary.published = not too_many
    summary.seconds = time.monotonic() - started
    if too_many:
        raise RejectedError(
            f"{summary.rows_rejected:,} of {summary.rows_read:,} rows rejected ({summary.rejected_fraction:.2%}), "
            f"more than --max-reject-fraction {settings.max_reject_fraction:g}: the scores were not published; "
            f"the reasons are in {settings.rejects.display}",
            summary,
        )
    return summary


def load(uri: str, digest: str | None, allow_pickle: bool, trusted_types: Sequence[str]) -> Bundle:
    """Load a bundle and replay its golden examples; refuse it if they no longer reproduce."""
    bundle = load_bundle(uri, expected_digest=digest, allow_pickle=allow_pickle, trusted_types=tuple(trusted_types))
    problems = parity.check(bundle)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ParityError(f"bundle {uri} does not reproduce its golden examples, so it may not score: {shown}")
    return bundle


def run(args: argparse.Namespace) -> int:
    """`steward-predict batch`, on the arguments cli.predict_parser() parsed."""
    _prefer_jemalloc()
    _keep_freed_memory()
    # Chunks are read and written on other threads while the main one scores: a BLAS thread pool would only spin
    # on their cores between one chunk's small matrix products and the next. The golden examples are replayed
    # with the same single thread as the rows are scored.
    with threadpool_limits(limits=1, user_api="blas"):
        return _batch(args)


def _prefer_jemalloc() -> None:
    """Arrow's default allocator keeps memory that threads freed for one another; over a long run of chunks
    read in one thread and written in another it creeps up. jemalloc hands it back. An explicit choice in
    ARROW_DEFAULT_MEMORY_POOL wins."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    with contextlib.suppress(NotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())


def _keep_freed_memory() -> None:
    """Each chunk allocates and frees the same few tens of megabytes of arrays in the pipeline. By default
    glibc gives blocks that large back to the kernel when they are freed, and the next chunk takes them back a
    page at a time, each one zeroed; kept on the heap, they are reused as they are. Free memory beyond
    TRIM_THRESHOLD still goes back. Other C libraries are left as they are."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
        mallopt = ctypes.CDLL(None).mallopt if libc.startswith("glibc") else None
    except (ValueError, OSError, AttributeError):
        return
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def _batch(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        with _terminate_as_interrupt(), datasets.Transaction() as transaction:
            columns = prepare(transaction, settings)
            bundle = load(args.bundle, args.digest, args.allow_pickle, args.trust_type)
            _say(
                f"scoring {settings.input.display} with model {bundle.metadata.model_version} ({bundle.digest}) "
                f"into {settings.output.display}, run {settings.run_id}"
            )
            summary = score_batch(transaction, settings, bundle, columns)
    except (UsageError, datasets.LocationError) as error:
        _say(f"error: {error}")
        return EXIT_USAGE
    except (BundleError, ParityError) as error:
        _say(f"bundle refused: {error}")
        return EXIT_REFUSED
    except RejectedError as error:
        if error.summary is not None:
            print(error.summary.as_json(), flush=True)
        _say(f"rejected: {error}")
        return EXIT_REJECTED
    except datasets.DatasetError as error:
        _say(f"failed: {error}; nothing was published")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("interrupted; nothing was published")
        return EXIT_FAILED
    print(summary.as_json(), flush=True)
    return EXIT_OK


def _settings(args: argparse.Namespace) -> Settings:
    source = datasets.locate(args.input, args.input_format, args.input_table, role="input")
    output = datasets.locate(args.output, args.output_format, args.output_table, role="output")
    if args.rejects is None and args.rejects_format is None and args.rejects_table is None:
        rejects = datasets.rejects_beside(output)
    else:
        uri = args.rejects or (output.uri if output.format == "sql" else None)
        if uri is None:
            raise UsageError("--rejects-table and --rejects-format go with --rejects URI")
        rejects = datasets.locate(uri, args.rejects_format, args.rejects_table, role="rejects")
    return Settings(
        input=source,
        output=output,
        rejects=rejects,
        id_column=args.id_column,
        chunk_rows=args.chunk_rows,
        max_reject_fraction=args.max_reject_fraction,
        if_exists=args.if_exists,
        run_id=args.run_id or uuid.uuid4().hex,
    )


def _refuse_missing_columns(source: datasets.Location, schema: FeatureSchema, columns: Sequence[str]) -> None:
    """Every row of an input without a column the model needs would be rejected: say so before reading it."""
    missing = [name for name in schema.names if name not in columns]
    if missing and schema.policy.missing_field == "reject":
        raise RejectedError(
            f"{source.display} has no column {', '.join(map(repr, missing))}, which the model needs: "
            "every row would be rejected, so none was scored"
        )


def _check_appendable(
    transaction: datasets.Transaction, location: datasets.Location, if_exists: IfExists, columns: list[str]
) -> None:
    if if_exists != "append" or not transaction.exists(location):
        return
    existing = transaction.columns(location)
    fits = set(columns) <= set(existing) if location.format == "sql" else existing == columns
    if not fits:
        raise datasets.LocationError(
            f"cannot append to {location.display}: it has the columns {existing}, this run writes {columns}"
        )


def _prediction_type(classes: list[Any] | None) -> pa.DataType:
    if classes is None:
        return pa.float64()
    try:
        kind: pa.DataType = pa.array(classes).type
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.string()
    return kind


def _request_ids(run_id: str, rows: pa.Array) -> pa.Array:
    """<run id>-<row> for each row number: the prefix put in front of each number's digits, which costs Arrow
    less than joining each number with the run id."""
    ids: pa.Array = pc.binary_replace_slice(pc.cast(rows, pa.string()), start=0, stop=0, replacement=f"{run_id}-")
    return ids


def _column(values: pd.Series) -> pd.Series | np.ndarray:
    """A chunk's column for validation: categoricals as they are, checked once per distinct value; anything else
    as an array."""
    return values if isinstance(values.dtype, pd.CategoricalDtype) else values.to_numpy()


def _copied(values: np.ndarray) -> pa.Array:
    """An id column as it was read; a chunk where it is all missing still comes out as text, not as nulls."""
    array = pa.array(values, from_pandas=True)
    return array.cast(pa.string()) if pa.types.is_null(array.type) else array


def _as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    return str(value)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """A Job that is deleted gets SIGTERM: unwind as for Ctrl-C, so staged output is removed, not published."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(message: str) -> None:
    print(f"steward-predict: {message}", file=sys.stderr, flush=True)
