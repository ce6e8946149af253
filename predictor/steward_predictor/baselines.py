"""Training baselines: how each feature and the predictions were distributed at training time, binned the way
the predictor bins live traffic, so drift is a comparison of like with like."""

from __future__ import annotations

from functools import cached_property
from itertools import repeat
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from steward_predictor.schemas import FeatureSchema

# Most frequent categories kept per categorical feature; the rest share one "other" bin.
TOP_K = 10
DECILES = np.linspace(0.1, 0.9, 9)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)


class Histogram(_Model):
    """A distribution over bins. Numeric: bin i holds values in (edges[i-1], edges[i]]; the first and last bins
    are open-ended. Categorical: one bin per category, then one for every other value."""

    name: str
    kind: Literal["numeric", "categorical"]
    edges: list[float] | None = None
    categories: list[str] | None = None
    fractions: list[float]
    """Share of present values in each bin."""
    missing: float = 0.0
    """Share of values that were missing."""

    @property
    def labels(self) -> list[str]:
        """A bounded label per bin, for metrics."""
        if self.kind == "categorical":
            return [*(self.categories or []), "__other__"]
        return [str(index) for index in range(len(self.fractions))]

    def bin(self, values: np.ndarray) -> np.ndarray:
        """The bin index of each value; -1 for a missing one."""
        if self.kind == "numeric":
            numbers = np.asarray(values, dtype=float)
            index = np.searchsorted(self._edges, numbers, side="left")
            index[np.isnan(numbers)] = -1
            return index
        lookup = self._lookup
        index = np.array(list(map(lookup.get, values, repeat(len(lookup), len(values)))), dtype=np.int64)
        index[pd.isna(np.asarray(values, dtype=object))] = -1
        return index

    @cached_property
    def _edges(self) -> np.ndarray:
        return np.asarray(self.edges or [], dtype=float)

    @cached_property
    def _lookup(self) -> dict[Any, int]:
        return {category: position for position, category in enumerate(self.categories or [])}


class Baselines(_Model):
    """Per-feature and prediction histograms of the training data."""

    rows: int
    features: list[Histogram]
    predictions: Histogram
    """Predicted classes (classification) or predicted values (regression)."""
    scores: Histogram | None = None
    """For binary classifiers: the positive class's probability."""


def numeric_histogram(name: str, values: Any) -> Histogram:
    numbers = np.asarray(values, dtype=float)
    present = numbers[~np.isnan(numbers)]
    edges = sorted(set(np.quantile(present, DECILES).tolist())) if len(present) else []
    histogram = Histogram(name=name, kind="numeric", edges=edges, fractions=[0.0] * (len(edges) + 1))
    return _fill(histogram, numbers)


def categorical_histogram(name: str, values: Any) -> Histogram:
    series = pd.Series(values, dtype=object)
    counts = series.dropna().astype(str).value_counts()
    # Ties are broken by name, so the same data always yields the same bins.
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_K]
    histogram = Histogram(
        name=name,
        kind="categorical",
        categories=[str(category) for category, _ in top],
        fractions=[0.0] * (len(top) + 1),
    )
    return _fill(histogram, series.where(series.isna(), series.astype(str)).to_numpy())


def compute(
    frame: pd.DataFrame, schema: FeatureSchema, predictions: np.ndarray, scores: np.ndarray | None
) -> Baselines:
    features = [
        numeric_histogram(feature.name, frame[feature.name])
        if feature.kind == "numeric"
        else categorical_histogram(feature.name, frame[feature.name])
        for feature in schema.features
    ]
    if predictions.dtype.kind in "fc":
        prediction_histogram = numeric_histogram("prediction", predictions)
    else:
        prediction_histogram = categorical_histogram("prediction", predictions.astype(str))
    return Baselines(
        rows=len(frame),
        features=features,
        predictions=prediction_histogram,
        scores=numeric_histogram("score", scores) if scores is not None else None,
    )


def _fill(histogram: Histogram, values: np.ndarray) -> Histogram:
    index = histogram.bin(values)
    present = index[index >= 0]
    counts = np.bincount(present, minlength=len(histogram.fractions)).astype(float)
    fractions = (counts / counts.sum()).tolist() if counts.sum() else counts.tolist()
    missing = float((index < 0).mean()) if len(index) else 0.0
    return histogram.model_copy(update={"fractions": fractions, "missing": missing})
