"""The predictor's Prometheus metrics: the evidence behind every promotion, rollback and drift alert.

Every series carries the model name, model version and variant. Feature and prediction histograms use the
bundle's training bins, so cardinality is bounded by features x bins and drift compares like with like.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from steward_contracts.metrics import (
    COUNTED,
    PREDICTOR_DRIFT_THRESHOLD,
    PREDICTOR_FEATURE_MISSING,
    PREDICTOR_FEATURE_PROBLEMS,
    PREDICTOR_FEATURE_TRAINING_SHARE,
    PREDICTOR_FEATURE_VALUES,
    PREDICTOR_HOLDOUT,
    PREDICTOR_MODEL_INFO,
    PREDICTOR_PREDICTION_TRAINING_SHARE,
    PREDICTOR_PREDICTIONS,
    PREDICTOR_READY,
    PREDICTOR_REQUEST_DURATION,
    PREDICTOR_REQUESTS,
    PREDICTOR_ROWS,
    PREDICTOR_SCORES,
    QUALITY_METRICS,
    REJECTED,
    VERSION_LABELS,
    Family,
)
from steward_predictor.baselines import Histogram as Bins
from steward_predictor.bundles import Bundle
from steward_predictor.schemas import Checked, Violation

# The held-out results a release's validation gate can compare (spec.rollout.validation.metric).
HOLDOUT_METRICS = QUALITY_METRICS
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
    created: float = field(default_factory=time.time)
    """When counting began, from 0: published as `<name>_created` where the family's contract says so."""
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
            values = _counter(
                PREDICTOR_FEATURE_VALUES,
                "Feature values seen, by the bundle's training bin (decile index, or category).",
            )
            missing = _counter(PREDICTOR_FEATURE_MISSING, "Feature values that were missing.")
            for binned in self.features:
                for label, count in zip(binned.histogram.labels, binned.counts.tolist(), strict=True):
                    values.add_metric(
                        [*binned.base, binned.name, label], count, created=_created(PREDICTOR_FEATURE_VALUES, binned)
                    )
                missing.add_metric(
                    [*binned.base, binned.name], binned.missing, created=_created(PREDICTOR_FEATURE_MISSING, binned)
                )
            predictions = _counter(
                PREDICTOR_PREDICTIONS,
                "Predictions, by class (classifiers) or by the bundle's training bin of predicted values.",
            )
            scores = _counter(
                PREDICTOR_SCORES, "Binary classifiers: the positive class's probability, by the bundle's training bin."
            )
            for family, contract, binned_list in (
                (predictions, PREDICTOR_PREDICTIONS, self.predictions),
                (scores, PREDICTOR_SCORES, self.scores),
            ):
                for binned in binned_list:
                    for label, count in zip(binned.histogram.labels, binned.counts.tolist(), strict=True):
                        family.add_metric([*binned.base, label], count, created=_created(contract, binned))
            # What drift is measured against: each bin's share of the training data (of its present values).
            trained = GaugeMetricFamily(
                PREDICTOR_FEATURE_TRAINING_SHARE.name,
                "Share of the training data's present values in each of the feature's bins.",
                labels=list(PREDICTOR_FEATURE_TRAINING_SHARE.labels),
            )
            trained_predictions = GaugeMetricFamily(
                PREDICTOR_PREDICTION_TRAINING_SHARE.name,
                "Share of the training data's predictions in each bin.",
                labels=list(PREDICTOR_PREDICTION_TRAINING_SHARE.labels),
            )
            for binned in self.features:
                for label, share in zip(binned.histogram.labels, binned.histogram.fractions, strict=True):
                    trained.add_metric([*binned.base, binned.name, label], share)
            for binned in self.predictions:
                for label, share in zip(binned.histogram.labels, binned.histogram.fractions, strict=True):
                    trained_predictions.add_metric([*binned.base, label], share)
        yield from (values, missing, predictions, scores, trained, trained_predictions)


def _counter(contract: Family, documentation: str) -> CounterMetricFamily:
    return CounterMetricFamily(contract.name, documentation, labels=list(contract.labels))


def _created(contract: Family, binned: _Binned) -> float | None:
    """When `binned` began counting, for a family whose contract publishes `<name>_created`; else None."""
    return binned.created if contract.created else None


class Families:
    """The metric families, registered once per process."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            PREDICTOR_REQUESTS.name,
            "Prediction requests answered, by protocol and HTTP status code.",
            PREDICTOR_REQUESTS.labels,
            registry=registry,
        )
        self.latency = Histogram(
            PREDICTOR_REQUEST_DURATION.name,
            "Time to validate and score one request.",
            PREDICTOR_REQUEST_DURATION.labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rows = Counter(PREDICTOR_ROWS.name, "Rows scored.", PREDICTOR_ROWS.labels, registry=registry)
        self.problems = Counter(
            PREDICTOR_FEATURE_PROBLEMS.name,
            "Schema problems: missingField, unknownField, wrongType, missingValue, outOfRange, unseenCategory; "
            "action says whether the row was rejected or accepted and counted.",
            PREDICTOR_FEATURE_PROBLEMS.labels,
            registry=registry,
        )
        self.info = Gauge(
            PREDICTOR_MODEL_INFO.name,
            "The bundle being served (always 1).",
            PREDICTOR_MODEL_INFO.labels,
            registry=registry,
        )
        self.ready = Gauge(
            PREDICTOR_READY.name,
            "1 when the model passed its checks and serves.",
            PREDICTOR_READY.labels,
            registry=registry,
        )
        self.holdout = Gauge(
            PREDICTOR_HOLDOUT.name,
            "The bundle's held-out results (accuracy, rocAuc, logLoss, mae, rmse, r2); data names the rows they "
            "were computed on (a prefix of their fingerprint), so two versions on the same data compare exactly.",
            PREDICTOR_HOLDOUT.labels,
            registry=registry,
        )
        self.drift_threshold = Gauge(
            PREDICTOR_DRIFT_THRESHOLD.name,
            "spec.monitoring.drift for this version (warn, alert, breaches, windows), which the monitor judges its "
            "drift by.",
            PREDICTOR_DRIFT_THRESHOLD.labels,
            registry=registry,
        )
        self.binned = _BinnedFamilies()
        registry.register(self.binned)


class ModelMetrics:
    """Metrics for one model version and variant, with every labelled child resolved up front."""

    def __init__(self, families: Families, name: str, version: str, variant: str) -> None:
        self.families = families
        self.base = dict(zip(VERSION_LABELS, (name, version, variant), strict=True))
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

    def request(self, protocol: str, code: int, count: int = 1) -> None:
        """Count `count` requests (a stream's records) answered over `protocol` with HTTP status `code`."""
        counter = self._requests.get((protocol, code))
        if counter is None:
            counter = self._requests[(protocol, code)] = self.families.requests.labels(
                **self.base, protocol=protocol, code=str(code)
            )
        counter.inc(count)

    def observe_inputs(self, checked: Checked) -> None:
        columns = checked.columns
        with self.families.binned.lock:
            for name, binned in self._features:
                binned.add(columns[name])
        if checked.counted:
            self._problems(checked.counted, COUNTED)
        if checked.rejected:
            self._problems((problem for problems in checked.rejected.values() for problem in problems), REJECTED)

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
