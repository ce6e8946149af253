"""The monitor's own Prometheus metrics: what it stored, each version's quality on matured outcomes and its drift,
in a registry of its own, with a ceiling on how many versions are exported."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import prometheus_client

from steward_contracts.metrics import (
    LABEL_DELAY_QUANTILES,
    MONITOR_COMMIT_DURATION,
    MONITOR_COMMIT_RECORDS,
    MONITOR_DRIFT_ALERTING,
    MONITOR_DRIFT_LEVEL,
    MONITOR_DRIFT_PSI,
    MONITOR_DRIFT_UP,
    MONITOR_DRIFT_WINDOW_SAMPLES,
    MONITOR_DROPPED_VERSIONS,
    MONITOR_EVENTS,
    MONITOR_LABEL_DELAY,
    MONITOR_LABELLED_PREDICTIONS,
    MONITOR_PREDICTIONS,
    MONITOR_QUALITY,
)
from steward_monitor.quality import Quality
from steward_monitor.watching import VersionDrift

LEVELS = {"ok": 0, "warn": 1, "alert": 2}
Version = tuple[str, str, str]
"""(namespace, model, version)"""


class Metrics:
    """The monitor's own metrics, in a registry of its own. The gauges of at most `max_versions` model versions
    are exported: whoever holds a token could otherwise add series without end by inventing versions."""

    def __init__(self, max_versions: int = 500) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.max_versions = max_versions
        self._left_out: dict[str, set[Version]] = {}
        self.events = prometheus_client.Counter(
            MONITOR_EVENTS.name,
            "Records received, by kind (prediction, outcome) and result (stored, duplicate, rejected: a record "
            "refused, or a request that could not be read at all).",
            MONITOR_EVENTS.labels,
            registry=self.registry,
        )
        self.dropped_versions = prometheus_client.Counter(
            MONITOR_DROPPED_VERSIONS.name,
            "Model versions left out of the per-version gauges (quality or drift) because more than the cap were "
            "seen, the least recently seen first; counted when they leave. Their records stay in the store.",
            MONITOR_DROPPED_VERSIONS.labels,
            registry=self.registry,
        )
        self.commit_seconds = prometheus_client.Histogram(
            MONITOR_COMMIT_DURATION.name,
            "Time to commit one batch of records.",
            MONITOR_COMMIT_DURATION.labels,
            registry=self.registry,
        )
        self.batch_records = prometheus_client.Histogram(
            MONITOR_COMMIT_RECORDS.name,
            "Records per committed batch.",
            MONITOR_COMMIT_RECORDS.labels,
            buckets=(1, 10, 100, 1_000, 10_000, 100_000),
            registry=self.registry,
        )
        self.quality = prometheus_client.Gauge(
            MONITOR_QUALITY.name,
            "Quality of a model version on its predictions with known outcomes (accuracy, logLoss, rocAuc, "
            "calibrationError, mae, rmse).",
            MONITOR_QUALITY.labels,
            registry=self.registry,
        )
        self.predictions = prometheus_client.Gauge(
            MONITOR_PREDICTIONS.name,
            "Predictions stored in the quality window.",
            MONITOR_PREDICTIONS.labels,
            registry=self.registry,
        )
        self.labelled = prometheus_client.Gauge(
            MONITOR_LABELLED_PREDICTIONS.name,
            "Predictions in the quality window whose outcome has arrived.",
            MONITOR_LABELLED_PREDICTIONS.labels,
            registry=self.registry,
        )
        self.label_delay = prometheus_client.Gauge(
            MONITOR_LABEL_DELAY.name,
            "Time from prediction to outcome, over the labelled predictions in the quality window.",
            MONITOR_LABEL_DELAY.labels,
            registry=self.registry,
        )
        self.drift_psi = prometheus_client.Gauge(
            MONITOR_DRIFT_PSI.name,
            "PSI of a feature (or __prediction__) in the last drift window against its training shares.",
            MONITOR_DRIFT_PSI.labels,
            registry=self.registry,
        )
        self.drift_level = prometheus_client.Gauge(
            MONITOR_DRIFT_LEVEL.name,
            "Drift of a feature in the last window: 0 ok, 1 warn, 2 alert (PSI over the level and significant "
            "after Benjamini-Hochberg).",
            MONITOR_DRIFT_LEVEL.labels,
            registry=self.registry,
        )
        self.drift_alerting = prometheus_client.Gauge(
            MONITOR_DRIFT_ALERTING.name,
            "1 while a feature's drift has reached the alert level in enough of the last windows (persistence).",
            MONITOR_DRIFT_ALERTING.labels,
            registry=self.registry,
        )
        self.drift_samples = prometheus_client.Gauge(
            MONITOR_DRIFT_WINDOW_SAMPLES.name,
            "Values of a feature counted in the last drift window.",
            MONITOR_DRIFT_WINDOW_SAMPLES.labels,
            registry=self.registry,
        )
        self.drift_up = prometheus_client.Gauge(
            MONITOR_DRIFT_UP.name,
            "1 when the last drift window could be read from Prometheus, 0 when not (no data is not no drift).",
            MONITOR_DRIFT_UP.labels,
            registry=self.registry,
        )

    def newest(self, gauges: str, seen: Mapping[Version, Any]) -> set[Version]:
        """The versions whose `gauges` are exported: the `max_versions` seen last (`seen` orders them), counting
        those newly left out."""
        ranked = sorted(seen, key=lambda version: (seen[version], version), reverse=True)
        left_out = set(ranked[self.max_versions :])
        self.dropped_versions.labels(gauges).inc(len(left_out - self._left_out.get(gauges, set())))
        self._left_out[gauges] = left_out
        return set(ranked[: self.max_versions])

    def show_drift(self, judged: dict[Version, VersionDrift]) -> None:
        """Replace the drift gauges with the latest window; beyond the cap, the versions with the least traffic in
        it are left out."""
        for gauge in (self.drift_psi, self.drift_level, self.drift_alerting, self.drift_samples):
            gauge.clear()
        traffic = {version: sum(feature.samples for feature in drift.features) for version, drift in judged.items()}
        shown = self.newest("drift", traffic)
        for version, drift in judged.items():
            if version not in shown:
                continue
            for feature in drift.features:
                labels = (*version, feature.name)
                self.drift_psi.labels(*labels).set(feature.psi)
                self.drift_level.labels(*labels).set(LEVELS[feature.level])
                self.drift_alerting.labels(*labels).set(feature.name in drift.alerting)
                self.drift_samples.labels(*labels).set(feature.samples)

    def show(self, assessed: dict[Version, Quality]) -> None:
        """Replace the quality gauges with `assessed`, so a version that is gone leaves no stale series."""
        for gauge in (self.quality, self.predictions, self.labelled, self.label_delay):
            gauge.clear()
        for (namespace, model, version), quality in assessed.items():
            labels = (namespace, model, version)
            self.predictions.labels(*labels).set(quality.predictions)
            self.labelled.labels(*labels).set(quality.labelled)
            for metric, value in quality.metrics.items():
                self.quality.labels(*labels, metric).set(value)
            for quantile, delay in zip(LABEL_DELAY_QUANTILES, (quality.delay_p50, quality.delay_p90), strict=True):
                if delay is not None:
                    self.label_delay.labels(*labels, quantile).set(delay)
