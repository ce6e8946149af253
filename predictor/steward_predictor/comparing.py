"""Two bundles' answers to the same rows: a batch challenger's run scores each chunk with the incumbent's bundle too,
so a release compares the versions row by row on the same input, with no wait for the incumbent's own run. The
comparison goes into the run's summary, and from its termination message to the operator."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from steward_contracts.metrics import QUALITY_METRICS
from steward_predictor.baselines import Histogram
from steward_predictor.bundles import Bundle
from steward_predictor.chunks import PREDICTION, ROW, ScoredChunk

MESSAGE_BYTES = 4096
"""The most a container's termination message holds: what Kubernetes keeps of a longer one is its tail."""
LABEL_CHARS = 64
"""The longest label of a bin in the comparison, so that the bins (at most the ten classes the incumbent predicted most
in training and one for the rest) fit a termination message whatever the classes are called. Classes alike in their
first LABEL_CHARS characters share a bin, for both versions alike."""


@dataclass
class Side:
    """What one version did with the run's rows."""

    bundle: Bundle
    rows: int = 0
    rejected: int = 0
    predictions: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        holdout = self.bundle.holdout
        metrics = {name: holdout[name] for name in QUALITY_METRICS if isinstance(holdout.get(name), int | float)}
        return {
            "version": self.bundle.metadata.model_version,
            "digest": self.bundle.digest,
            "rows": self.rows,
            "rejected": self.rejected,
            "predictions": dict(sorted(self.predictions.items())),
            # As the predictor publishes them online: the held-out rows named by their fingerprint's prefix.
            "holdout": {"metrics": metrics, "data": str(holdout.get("fingerprint", "")).removeprefix("sha256:")[:16]},
        }


class Comparison:
    """The incumbent's and the challenger's answers to the same chunks: rows each rejected, predictions per bin of
    the incumbent's training predictions (the class, or the bin of a value), and how many rows both answered
    and how many of those they answered differently (another class, or another value)."""

    def __init__(self, incumbent: Bundle, challenger: Bundle) -> None:
        self.incumbent = Side(incumbent)
        self.challenger = Side(challenger)
        self.bins: Histogram = incumbent.baselines.predictions
        self.labels = [label[:LABEL_CHARS] for label in self.bins.labels]
        self.pairs = 0
        self.disagreements = 0

    def add(self, incumbent: ScoredChunk, challenger: ScoredChunk) -> None:
        """Both versions' scores of one chunk."""
        answers = []
        for side, chunk in ((self.incumbent, incumbent), (self.challenger, challenger)):
            found = _answers(chunk.scores.column(PREDICTION))
            side.rows += chunk.rows
            side.rejected += chunk.rejected
            side.predictions.update(self._binned(found))
            answers.append(found)
        rows_i = incumbent.scores.column(ROW).to_numpy()
        rows_c = challenger.scores.column(ROW).to_numpy()
        both, at_i, at_c = np.intersect1d(rows_i, rows_c, assume_unique=True, return_indices=True)
        self.pairs += len(both)
        self.disagreements += int(np.count_nonzero(answers[0][at_i] != answers[1][at_c]))

    def _binned(self, answers: np.ndarray) -> Counter[str]:
        index = self.bins.bin(answers if self.bins.kind == "numeric" else answers.astype(str))
        found, counts = np.unique(index[index >= 0], return_counts=True)
        binned = Counter[str]()
        for bin_, count in zip(found.tolist(), counts.tolist(), strict=True):
            binned[self.labels[bin_]] += int(count)
        return binned

    def as_dict(self) -> dict[str, Any]:
        return {
            "incumbent": self.incumbent.as_dict(),
            "challenger": self.challenger.as_dict(),
            "pairs": self.pairs,
            "disagreements": self.disagreements,
        }


def _answers(predictions: pa.ChunkedArray) -> np.ndarray:
    """The answers as an array that compares element by element: numbers as numbers, labels as text."""
    kind = predictions.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        numbers: np.ndarray = predictions.to_numpy()
        return numbers
    return np.asarray(predictions.to_pylist(), dtype=object).astype(str)


def message(summary: dict[str, Any]) -> str:
    """`summary` as a termination message: whole when it fits MESSAGE_BYTES; else without the locations and the
    counted problems, then without the predictions per bin, so the counts the operator judges on always arrive."""
    text = json.dumps(summary, separators=(",", ":"))
    if len(text.encode()) <= MESSAGE_BYTES:
        return text
    slim = {key: value for key, value in summary.items() if key not in {"input", "output", "rejects", "counted"}}
    text = json.dumps(slim, separators=(",", ":"))
    if len(text.encode()) <= MESSAGE_BYTES or "comparison" not in slim:
        return text[:MESSAGE_BYTES]
    comparison = slim["comparison"]
    for side in ("incumbent", "challenger"):
        comparison[side] = {**comparison[side], "predictions": {}}
    return json.dumps(slim, separators=(",", ":"))[:MESSAGE_BYTES]
