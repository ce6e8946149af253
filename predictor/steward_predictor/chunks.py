"""A batch run's chunks scored: the input rows of each chunk validated and predicted as online requests are, and
turned into a table of scores and a table of rejects with their reasons."""

from __future__ import annotations

import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from steward_predictor.defaults import UsageError
from steward_predictor.schemas import Checked, Violation
from steward_predictor.scoring import Scorer

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


class ChunkScorer:
    """Scores chunks of input rows through one scorer: the online validation first, then the pipeline, whose
    feature steps run once per chunk for both the prediction and the class probabilities."""

    def __init__(self, scorer: Scorer, *, run_id: str, id_column: str | None = None) -> None:
        self.scorer = scorer
        self.bundle = scorer.bundle
        self.features = self.bundle.schema.names
        self.run_id = run_id
        self.id_column = id_column
        self.classes = scorer.classes
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
        return self.scorer.validator.check_columns({name: _column(frame[name]) for name in present}, len(frame))

    def prepare(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, Checked]:
        """`frame` checked, with only what scoring it still needs kept: the id column, and the input columns
        too when rows were rejected, as the rejects carry their values. The rest is let go before the chunk's
        turn comes."""
        checked = self.check(frame)
        if checked.rejected:
            return frame, checked
        return frame[[self.id_column] if self.id_column else []], checked

    def prepare_whole(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, Checked]:
        """`frame` checked, and kept whole: another bundle scores it too."""
        return frame, self.check(frame)

    def score(
        self,
        frame: pd.DataFrame,
        first_row: int = 0,
        scored_at: datetime | None = None,
        checked: Checked | None = None,
    ) -> ScoredChunk:
        """Validate and score `frame`, whose first row is input row `first_row`. With `checked`, its validation
        is done already, and `frame` may be what `prepare` kept of it."""
        started = time.perf_counter()
        rows = len(frame)
        if checked is None:
            checked = self.check(frame)
        accepted = checked.accepted.astype(np.int64, copy=False)
        row_numbers = pa.array(first_row + accepted, type=pa.int64())
        # Arrow builds the request ids without the GIL, on another core while the pipeline predicts.
        request_ids = self._aside.submit(_request_ids, self.run_id, row_numbers)
        scored = self.scorer.score(checked, request_id=self.run_id, started=started)
        prediction, probabilities = scored.predictions, scored.probabilities
        if self.classes is None:
            prediction = prediction.astype(np.float64, copy=False)
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
