"""The predictor's Prometheus metrics: the evidence behind every promotion, rollback and drift alert.

Every series carries the model name, model version and variant. Feature and prediction histograms use the
bundle's training bins, so cardinality is bounded by features x bins and drift compares like with like.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from steward_predictor.baselines import Histogram as Bins
from steward_predictor.bundles import Bundle
from steward_predictor.schemas import Checked, Violation

_BASE = ("model", "version", "variant")
# From a fast in-memory pipeline (~1 ms) to a slow batch request; Prometheus sums them for any quantile.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN_FEATURE = "__unknown__"


class Families:
    """The metric families, registered once per process."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "steward_predictor_requests",
            "Prediction requests answered, by protocol and HTTP status code.",
            [*_BASE, "protocol", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "steward_predictor_request_duration_seconds",
            "Time to validate and score one request.",
            _BASE,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rows = Counter("steward_predictor_rows", "Rows scored.", _BASE, registry=registry)
        self.feature_bins = Counter(
            "steward_predictor_feature_values",
            "Feature values seen, by the bundle's training bin (decile index, or category).",
            [*_BASE, "feature", "bin"],
            registry=registry,
        )
        self.feature_missing = Counter(
            "steward_predictor_feature_missing",
            "Feature values that were missing.",
            [*_BASE, "feature"],
            registry=registry,
        )
        self.problems = Counter(
            "steward_predictor_feature_problems",
            "Schema problems: missingField, unknownField, wrongType, missingValue, outOfRange, unseenCategory; "
            "action says whether the row was rejected or accepted and counted.",
            [*_BASE, "feature", "problem", "action"],
            registry=registry,
        )
        self.prediction_bins = Counter(
            "steward_predictor_predictions",
            "Predictions, by class (classifiers) or by the bundle's training bin of predicted values.",
            [*_BASE, "bin"],
            registry=registry,
        )
        self.score_bins = Counter(
            "steward_predictor_scores",
            "Binary classifiers: the positive class's probability, by the bundle's training bin.",
            [*_BASE, "bin"],
            registry=registry,
        )
        self.info = Gauge(
            "steward_predictor_model_info",
            "The bundle being served (always 1).",
            [*_BASE, "digest", "feature_set_version"],
            registry=registry,
        )
        self.ready = Gauge(
            "steward_predictor_ready", "1 when the model passed its checks and serves.", _BASE, registry=registry
        )


class ModelMetrics:
    """Metrics for one loaded bundle, with every labelled child resolved up front: scoring adds numbers only."""

    def __init__(self, families: Families, name: str, version: str, variant: str) -> None:
        self.families = families
        self.base = {"model": name, "version": version, "variant": variant}
        self.latency = families.latency.labels(**self.base)
        self.rows = families.rows.labels(**self.base)
        self.ready = families.ready.labels(**self.base)
        self._features: list[tuple[str, Bins, list[Counter], Counter]] = []
        self._predictions: tuple[Bins, list[Counter]] | None = None
        self._scores: tuple[Bins, list[Counter]] | None = None

    def attach(self, bundle: Bundle) -> None:
        """Resolve the per-bin children of the bundle's training histograms."""
        self.families.info.labels(
            **self.base, digest=bundle.digest or "", feature_set_version=bundle.metadata.feature_set_version
        ).set(1)
        for histogram in bundle.baselines.features:
            children = [
                self.families.feature_bins.labels(**self.base, feature=histogram.name, bin=label)
                for label in histogram.labels
            ]
            missing = self.families.feature_missing.labels(**self.base, feature=histogram.name)
            self._features.append((histogram.name, histogram, children, missing))
        predictions = bundle.baselines.predictions
        self._predictions = (
            predictions,
            [self.families.prediction_bins.labels(**self.base, bin=label) for label in predictions.labels],
        )
        if bundle.baselines.scores is not None:
            scores = bundle.baselines.scores
            self._scores = (
                scores,
                [self.families.score_bins.labels(**self.base, bin=label) for label in scores.labels],
            )

    def request(self, protocol: str, code: int) -> None:
        self.families.requests.labels(**self.base, protocol=protocol, code=str(code)).inc()

    def observe_inputs(self, checked: Checked) -> None:
        frame = checked.frame
        for name, histogram, children, missing in self._features:
            _count(histogram, frame[name].to_numpy(), children, missing)
        self._problems(checked.counted, "counted")
        self._problems((violation for violations in checked.rejected.values() for violation in violations), "rejected")

    def observe_outputs(self, predictions: np.ndarray, scores: np.ndarray | None) -> None:
        self.rows.inc(len(predictions))
        if self._predictions is not None:
            histogram, children = self._predictions
            values = predictions if histogram.kind == "numeric" else predictions.astype(str)
            _count(histogram, values, children, None)
        if self._scores is not None and scores is not None:
            histogram, children = self._scores
            _count(histogram, scores, children, None)

    def _problems(self, violations: Iterable[Violation], action: str) -> None:
        tally: dict[tuple[str, str], int] = {}
        for violation in violations:
            feature = (
                violation.field if violation.problem != "unknownField" and violation.field != "*" else UNKNOWN_FEATURE
            )
            key = (feature, violation.problem)
            tally[key] = tally.get(key, 0) + 1
        for (feature, problem), count in tally.items():
            self.families.problems.labels(**self.base, feature=feature, problem=problem, action=action).inc(count)


def _count(histogram: Bins, values: np.ndarray, children: list[Counter], missing: Counter | None) -> None:
    index = histogram.bin(values)
    present = index[index >= 0]
    if missing is not None and len(present) < len(index):
        missing.inc(len(index) - len(present))
    if len(present) == 1:
        children[int(present[0])].inc()
        return
    counts = np.bincount(present, minlength=len(children))
    for position in np.flatnonzero(counts):
        children[position].inc(int(counts[position]))
