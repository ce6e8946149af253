"""The predictor's Prometheus metrics: the evidence behind every promotion, rollback and drift alert.

Every series carries the model name, model version and variant. Feature and prediction histograms use the
bundle's training bins, so cardinality is bounded by features x bins and drift compares like with like.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from steward_predictor.baselines import Histogram as Bins
from steward_predictor.bundles import Bundle
from steward_predictor.schemas import Checked, Violation

_BASE = ("model", "version", "variant")
# The held-out results a release's validation gate can compare (spec.rollout.validation.metric).
HOLDOUT_METRICS = ("accuracy", "rocAuc", "logLoss", "mae", "rmse", "r2")
# From a fast in-memory pipeline (~1 ms) to a slow batch request; Prometheus sums them for any quantile.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN_FEATURE = "__unknown__"
# Values wait to be binned until this many have come (or Prometheus scrapes): one numpy pass over thousands
# of rows instead of one per request.
FLUSH_ROWS = 4096


@dataclass
class _Binned:
    """Counts over one histogram's bins (plus missing values), for one model, version and variant."""

    base: tuple[str, str, str]
    name: str
    histogram: Bins
    counts: np.ndarray
    missing: int = 0
    pending: list[np.ndarray] = field(default_factory=list)
    pending_rows: int = 0

    def add(self, values: np.ndarray) -> None:
        """Count values; they are binned in batches, which costs a request almost nothing."""
        self.pending.append(values)
        self.pending_rows += len(values)
        if self.pending_rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        values = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.pending, self.pending_rows = [], 0
        index = self.histogram.bin(values)
        present = index[index >= 0]
        self.missing += len(index) - len(present)
        self.counts += np.bincount(present, minlength=len(self.counts))


class _BinnedFamilies(Collector):
    """Bin counters kept as numpy arrays and turned into samples only when Prometheus scrapes: one request
    adds an array instead of making a counter call per bin."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.features: list[_Binned] = []
        self.predictions: list[_Binned] = []
        self.scores: list[_Binned] = []

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            for binned in (*self.features, *self.predictions, *self.scores):
                binned.flush()
            values = CounterMetricFamily(
                "steward_predictor_feature_values",
                "Feature values seen, by the bundle's training bin (decile index, or category).",
                labels=[*_BASE, "feature", "bin"],
            )
            missing = CounterMetricFamily(
                "steward_predictor_feature_missing", "Feature values that were missing.", labels=[*_BASE, "feature"]
            )
            for binned in self.features:
                for label, count in zip(binned.histogram.labels, binned.counts.tolist(), strict=True):
                    values.add_metric([*binned.base, binned.name, label], count)
                missing.add_metric([*binned.base, binned.name], binned.missing)
            predictions = CounterMetricFamily(
                "steward_predictor_predictions",
                "Predictions, by class (classifiers) or by the bundle's training bin of predicted values.",
                labels=[*_BASE, "bin"],
            )
            scores = CounterMetricFamily(
                "steward_predictor_scores",
                "Binary classifiers: the positive class's probability, by the bundle's training bin.",
                labels=[*_BASE, "bin"],
            )
            for family, binned_list in ((predictions, self.predictions), (scores, self.scores)):
                for binned in binned_list:
                    for label, count in zip(binned.histogram.labels, binned.counts.tolist(), strict=True):
                        family.add_metric([*binned.base, label], count)
            # What drift is measured against: each bin's share of the training data (of its present values).
            trained = GaugeMetricFamily(
                "steward_predictor_feature_training_share",
                "Share of the training data's present values in each of the feature's bins.",
                labels=[*_BASE, "feature", "bin"],
            )
            trained_predictions = GaugeMetricFamily(
                "steward_predictor_prediction_training_share",
                "Share of the training data's predictions in each bin.",
                labels=[*_BASE, "bin"],
            )
            for binned in self.features:
                for label, share in zip(binned.histogram.labels, binned.histogram.fractions, strict=True):
                    trained.add_metric([*binned.base, binned.name, label], share)
            for binned in self.predictions:
                for label, share in zip(binned.histogram.labels, binned.histogram.fractions, strict=True):
                    trained_predictions.add_metric([*binned.base, label], share)
        yield from (values, missing, predictions, scores, trained, trained_predictions)


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
        self.problems = Counter(
            "steward_predictor_feature_problems",
            "Schema problems: missingField, unknownField, wrongType, missingValue, outOfRange, unseenCategory; "
            "action says whether the row was rejected or accepted and counted.",
            [*_BASE, "feature", "problem", "action"],
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
        self.holdout = Gauge(
            "steward_predictor_holdout",
            "The bundle's held-out results (accuracy, rocAuc, logLoss, mae, rmse, r2); data names the rows they "
            "were computed on (a prefix of their fingerprint), so two versions on the same data compare exactly.",
            [*_BASE, "metric", "data"],
            registry=registry,
        )
        self.drift_threshold = Gauge(
            "steward_predictor_drift_threshold",
            "spec.monitoring.drift for this version (warn, alert, breaches, windows), which the monitor judges its "
            "drift by.",
            [*_BASE, "threshold"],
            registry=registry,
        )
        self.binned = _BinnedFamilies()
        registry.register(self.binned)


class ModelMetrics:
    """Metrics for one model version and variant, with every labelled child resolved up front."""

    def __init__(self, families: Families, name: str, version: str, variant: str) -> None:
        self.families = families
        self.base = {"model": name, "version": version, "variant": variant}
        self._key = (name, version, variant)
        self.latency = families.latency.labels(**self.base)
        self.rows = families.rows.labels(**self.base)
        self.ready = families.ready.labels(**self.base)
        self._requests: dict[tuple[str, int], Counter] = {}
        self._features: list[tuple[str, _Binned]] = []
        self._predictions: _Binned | None = None
        self._scores: _Binned | None = None
        self._class_bins: np.ndarray | None = None

    def thresholds(self, thresholds: dict[str, float]) -> None:
        """Publish the drift thresholds the ModelDeployment asks for."""
        for name, value in thresholds.items():
            self.families.drift_threshold.labels(**self.base, threshold=name).set(value)

    def attach(self, bundle: Bundle) -> None:
        """Publish the bundle's held-out results, and start counting over its training bins."""
        self.families.info.labels(
            **self.base, digest=bundle.digest or "", feature_set_version=bundle.metadata.feature_set_version
        ).set(1)
        data = str(bundle.holdout.get("fingerprint", "")).removeprefix("sha256:")[:16] or "unknown"
        for metric in HOLDOUT_METRICS:
            value = bundle.holdout.get(metric)
            if isinstance(value, int | float):
                self.families.holdout.labels(**self.base, metric=metric, data=data).set(value)
        binned = self.families.binned
        with binned.lock:
            for histogram in bundle.baselines.features:
                feature = self._binned(histogram.name, histogram)
                binned.features.append(feature)
                self._features.append((histogram.name, feature))
            self._predictions = self._binned("prediction", bundle.baselines.predictions)
            binned.predictions.append(self._predictions)
            if bundle.metadata.classes is not None:
                # Class position in predict_proba's columns -> bin of the prediction histogram.
                labels = np.array([str(label) for label in bundle.metadata.classes], dtype=object)
                self._class_bins = bundle.baselines.predictions.bin(labels)
            if bundle.baselines.scores is not None:
                self._scores = self._binned("score", bundle.baselines.scores)
                binned.scores.append(self._scores)

    def _binned(self, name: str, histogram: Bins) -> _Binned:
        return _Binned(self._key, name, histogram, np.zeros(len(histogram.labels), dtype=np.int64))

    def request(self, protocol: str, code: int) -> None:
        counter = self._requests.get((protocol, code))
        if counter is None:
            counter = self._requests[(protocol, code)] = self.families.requests.labels(
                **self.base, protocol=protocol, code=str(code)
            )
        counter.inc()

    def observe_inputs(self, checked: Checked) -> None:
        columns = checked.columns
        with self.families.binned.lock:
            for name, binned in self._features:
                binned.add(columns[name])
        if checked.counted:
            self._problems(checked.counted, "counted")
        if checked.rejected:
            self._problems((problem for problems in checked.rejected.values() for problem in problems), "rejected")

    def observe_outputs(self, predictions: np.ndarray, probabilities: np.ndarray | None) -> None:
        """Count predictions: for classifiers by class (from the probabilities, without turning labels into
        text), for regressors by the training bins of predicted values."""
        self.rows.inc(len(predictions))
        with self.families.binned.lock:
            if self._predictions is not None:
                if probabilities is not None and self._class_bins is not None:
                    bins = self._class_bins[np.argmax(probabilities, axis=1)]
                    self._predictions.counts += np.bincount(bins, minlength=len(self._predictions.counts))
                else:
                    self._predictions.add(predictions)
            if self._scores is not None and probabilities is not None:
                self._scores.add(probabilities[:, 1])

    def _problems(self, violations: Iterable[Violation], action: str) -> None:
        tally: dict[tuple[str, str], int] = {}
        for violation in violations:
            unnamed = violation.problem == "unknownField" or violation.field == "*"
            key = (UNKNOWN_FEATURE if unnamed else violation.field, violation.problem)
            tally[key] = tally.get(key, 0) + 1
        for (feature, problem), count in tally.items():
            self.families.problems.labels(**self.base, feature=feature, problem=problem, action=action).inc(count)
