"""Batch scoring: a model bundle applied to a file or table chunk by chunk, every row validated exactly as an
online request is, scores and rejects published whole or not at all."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import pandas as pd

from steward_predictor import datasets, locations
from steward_predictor.batch_log import BatchLog
from steward_predictor.chunks import ChunkScorer, ScoredChunk
from steward_predictor.comparing import Comparison
from steward_predictor.defaults import DEFAULT_CHUNK_ROWS, DEFAULT_MAX_REJECT_FRACTION, IfExists, UsageError
from steward_predictor.progress import Progress
from steward_predictor.schemas import Checked, Feature, FeatureSchema
from steward_predictor.scoring import Scorer
from steward_predictor.writers import Writer


class RejectedError(Exception):
    """Too many rows failed validation; the output was not published."""

    def __init__(self, message: str, summary: Summary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class Run:
    """What one batch run reads, writes and tolerates."""

    input: locations.Location
    output: locations.Location
    rejects: locations.Location
    id_column: str | None = None
    """An input column copied to every scored and rejected row (a customer id, say)."""
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION
    if_exists: IfExists = "fail"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Prefix of every request id: <run id>-<row>."""


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
    comparison: Comparison | None = None
    """With --compare-with: both versions' answers to the same rows."""
    shadow: dict[str, Any] | None = None
    """With --shadow: its version and the rows it answered, or why it was left out."""
    reported: dict[str, int] | None = None
    """With a monitor: what became of the rows reported to it."""

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
        return json.dumps(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        found = {
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
        if self.comparison is not None:
            found["comparison"] = self.comparison.as_dict()
        for key, value in (("shadow", self.shadow), ("reported", self.reported)):
            if value is not None:
                found[key] = value
        return found


def prepare(transaction: datasets.Transaction, settings: Run) -> list[str]:
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
        raise locations.LocationError(
            f"{settings.output.display} already exists and was left as it is: pass --if-exists replace to "
            "replace it, or --if-exists append to add the new scores to it"
        )
    return columns


def score_batch(
    transaction: datasets.Transaction,
    settings: Run,
    scorer: Scorer,
    columns: Sequence[str],
    progress: TextIO | None = None,
    *,
    stopping: threading.Event | None = None,
    incumbent: Scorer | None = None,
    shadow: Scorer | None = None,
    log: BatchLog | None = None,
) -> Summary:
    """Score every row of the input, write scores and rejects, and publish them: the scores only if no more
    than the allowed fraction of rows was rejected (else `RejectedError`), the rejects either way. Once
    `stopping` is set, the run stops at the next chunk, or before publishing, with KeyboardInterrupt. With an
    `incumbent`, each chunk is scored with its bundle too (nothing of it written), and the summary compares the
    two. Each scored row goes to `log`, and with a `shadow`, that bundle's answer to it too (nothing else of it
    kept); a shadow that fails is left out for the rest of the run."""
    bundle = scorer.bundle
    chunk_scorer = ChunkScorer(scorer, run_id=settings.run_id, id_column=settings.id_column)
    others = {
        role: ChunkScorer(other, run_id=settings.run_id)
        for role, other in (("incumbent", incumbent), ("shadow", shadow))
        if other
    }
    schema = bundle.schema
    schemas = [schema, *(other.bundle.schema for other in others.values())]
    features = list({feature.name: feature for each in reversed(schemas) for feature in each.features}.values())
    _refuse_missing_columns(settings.input, schema, columns)
    rejects_mode: IfExists = "append" if settings.if_exists == "append" else "replace"
    _check_appendable(transaction, settings.output, settings.if_exists, chunk_scorer.columns)
    _check_appendable(transaction, settings.rejects, rejects_mode, chunk_scorer.reject_columns)
    stream = progress or sys.stderr
    ignored = [name for name in columns if name not in {*(feature.name for feature in features), settings.id_column}]
    if ignored:
        print(f"steward-predict: ignoring {len(ignored)} input columns the model does not use", file=stream)

    summary = Summary(
        run_id=settings.run_id,
        model_version=bundle.metadata.model_version,
        digest=bundle.digest,
        input=settings.input.display,
        output=settings.output.display,
        rejects=settings.rejects.display,
        comparison=None if incumbent is None else Comparison(incumbent.bundle, bundle),
        shadow=None
        if shadow is None
        else {"version": shadow.bundle.version, "digest": shadow.bundle.digest, "rows": 0},
    )
    started = time.monotonic()
    output = transaction.writer(settings.output, settings.if_exists)
    rejects = transaction.writer(settings.rejects, rejects_mode)
    chunks = _chunks(transaction, settings, chunk_scorer, columns, features, whole=bool(others))
    bar = Progress(stream, transaction.count(settings.input))
    try:
        for frame, checked in chunks:
            _stop_if_asked(stopping)
            chunk = chunk_scorer.score(frame, summary.rows_read, checked=checked)
            if "incumbent" in others and summary.comparison is not None:
                summary.comparison.add(others["incumbent"].score(frame, summary.rows_read), chunk)
            if log is not None:
                log.add(chunk, scorer, "incumbent")
                if "shadow" in others and not _shadowed(others["shadow"], frame, summary, log, stream):
                    del others["shadow"]
            output.write(chunk.scores)
            rejects.write(chunk.rejects)
            summary.add(chunk)
            bar.advance(chunk.rows, summary.rows_read, summary.rows_rejected)
    finally:
        bar.close()
    _stop_if_asked(stopping)
    _publish(transaction, settings, summary, (output, rejects), stream)
    summary.seconds = time.monotonic() - started
    if not summary.published:
        raise RejectedError(
            f"{summary.rows_rejected:,} of {summary.rows_read:,} rows rejected ({summary.rejected_fraction:.2%}), "
            f"more than --max-reject-fraction {settings.max_reject_fraction:g}: the scores were not published; "
            f"the reasons are in {settings.rejects.display}",
            summary,
        )
    return summary


def _publish(
    transaction: datasets.Transaction,
    settings: Run,
    summary: Summary,
    writers: tuple[Writer, Writer],
    stream: TextIO,
) -> None:
    """Publish the rejects, and the scores unless too many rows were rejected, and commit."""
    output, rejects = writers
    too_many = summary.rows_rejected > settings.max_reject_fraction * summary.rows_read
    published = [settings.rejects] if too_many else [settings.output, settings.rejects]
    remote = [location.display for location in published if location.remote]
    if remote:
        # Object stores have no rename: the staged keys are copied, which takes a while for large output.
        print(f"steward-predict: copying into place: {', '.join(remote)}", file=stream, flush=True)
    if too_many:
        output.discard()
    else:
        output.publish()
    rejects.publish()
    transaction.commit()
    summary.published = not too_many


def _shadowed(shadow: ChunkScorer, frame: pd.DataFrame, summary: Summary, log: BatchLog, stream: TextIO) -> bool:
    """Whether the shadow's bundle scored the chunk `frame`, whose rows `log` got, and its answers went to `log` too.
    A shadow whose pipeline fails is a challenger's failing, never this run's: it is said once and left out."""
    try:
        chunk = shadow.score(frame, summary.rows_read)
    except Exception as error:  # whatever a challenger's pipeline raises, the incumbent's run goes on
        failure = f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
        print(f"steward-predict: the shadow failed and is left out: {failure}", file=stream, flush=True)
        if summary.shadow is not None:
            summary.shadow["failed"] = failure
        return False
    log.add(chunk, shadow.scorer, "shadow")
    if summary.shadow is not None:
        summary.shadow["rows"] += chunk.rows - chunk.rejected
    return True


def _chunks(
    transaction: datasets.Transaction,
    settings: Run,
    chunk_scorer: ChunkScorer,
    columns: Sequence[str],
    features: Sequence[Feature],
    *,
    whole: bool,
) -> Iterator[tuple[pd.DataFrame, Checked]]:
    """The input's chunks with the columns `features` need, read as their kinds say, each checked. Validation
    needs no row numbers: files have it done where the chunk is read, a chunk ahead. With `whole`, each chunk
    keeps every column read, for another bundle to score too."""
    named = [settings.id_column, *(feature.name for feature in features)]
    return transaction.read(
        settings.input,
        list(dict.fromkeys(name for name in named if name and name in columns)),
        chunk_rows=settings.chunk_rows,
        prepare=chunk_scorer.prepare_whole if whole else chunk_scorer.prepare,
        numbers=[feature.name for feature in features if feature.kind == "numeric"],
        texts=[
            *(feature.name for feature in features if feature.kind == "categorical"),
            *([settings.id_column] if settings.id_column else []),
        ],
        categories=[
            feature.name
            for feature in features
            if feature.categories is not None and feature.name != settings.id_column
        ],
    )


def _stop_if_asked(stopping: threading.Event | None) -> None:
    if stopping is not None and stopping.is_set():
        raise KeyboardInterrupt


def _refuse_missing_columns(source: locations.Location, schema: FeatureSchema, columns: Sequence[str]) -> None:
    """Every row of an input without a column the model needs would be rejected: say so before reading it."""
    missing = [name for name in schema.names if name not in columns]
    if missing and schema.policy.missing_field == "reject":
        raise RejectedError(
            f"{source.display} has no column {', '.join(map(repr, missing))}, which the model needs: "
            "every row would be rejected, so none was scored"
        )


def _check_appendable(
    transaction: datasets.Transaction, location: locations.Location, if_exists: IfExists, columns: list[str]
) -> None:
    if if_exists != "append" or not transaction.exists(location):
        return
    existing = transaction.columns(location)
    fits = set(columns) <= set(existing) if location.format == "sql" else existing == columns
    if not fits:
        raise locations.LocationError(
            f"cannot append to {location.display}: it has the columns {existing}, this run writes {columns}"
        )
