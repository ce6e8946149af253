"""The Prometheus metric families Steward exports, with their labels and the label values others filter on: the
predictors' (read by the operator's Prometheus provider, the monitor, the alert rules and the dashboard), the
monitor's (read by the provider, the rules and the dashboard) and the operator's own (read by the dashboard).

A family's exporter registers it under `name`, with `labels` in that order; Prometheus stores the series in
`samples`, which is all a query may read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

# The series Prometheus stores for a family of each kind, besides `<name>_created`.
_SUFFIXES: dict[Kind, tuple[str, ...]] = {"counter": ("total",), "gauge": (), "histogram": ("bucket", "sum", "count")}


@dataclass(frozen=True)
class Family:
    """One metric family, as its exporter registers it and as queries read it."""

    name: str
    """The family's name, without the `_total` of a counter's samples."""
    kind: Kind
    labels: tuple[str, ...] = ()
    """The labels its exporter sets, in order; a scrape adds the target's own (TARGET_LABELS)."""
    created: bool = False
    """Whether its exporter publishes `<name>_created`, the moment each series began counting from 0: the operator's
    Prometheus provider counts a new pod's first scrape from 0 by it, and sees a restart after which the counter
    had already grown past its old value."""

    @property
    def samples(self) -> tuple[str, ...]:
        """The names of the series Prometheus stores for this family."""
        suffixes = _SUFFIXES[self.kind] + (("created",) if self.created else ())
        if not suffixes:
            return (self.name,)
        return tuple(f"{self.name}_{suffix}" for suffix in suffixes)

    def sample(self, suffix: str) -> str:
        """`<name>_<suffix>`, one of `samples`: total or created for a counter; bucket, sum, count or created for a
        histogram. A series the family does not have is a ValueError, so no query can ask for one."""
        sample = f"{self.name}_{suffix}"
        if sample not in self.samples:
            raise ValueError(f"{self.name} ({self.kind}) has no series {sample}")
        return sample


TARGET_LABELS = ("namespace", "pod", "job", "instance")
"""The labels a scrape adds to a predictor's series: its pod's namespace (the ModelDeployment's) and name, which the
scrape configuration's relabelling sets from Kubernetes discovery, and job and instance, which Prometheus adds and
which tell pods apart."""
BUCKET_LABEL = "le"
"""The upper bound of a histogram's `<name>_bucket` series, in seconds for a duration."""

# --- label values ---------------------------------------------------------------------------------------------------

VARIANTS = ("incumbent", "challenger", "shadow")
"""A predictor's role in a release (STEWARD_VARIANT, the `variant` label)."""
COUNTED = "counted"
"""A row with a schema problem that was accepted and counted (the `action` label)."""
REJECTED = "rejected"
"""A row with a schema problem that was refused (the `action` label)."""
ACTIONS = (COUNTED, REJECTED)
PROBLEMS = ("unknownField", "missingField", "wrongType", "missingValue", "outOfRange", "unseenCategory")
"""The schema problems a predictor counts (the `problem` label)."""
QUALITY_METRICS = ("accuracy", "rocAuc", "logLoss", "mae", "rmse", "r2")
"""The quality measures a bundle's held-out results and the monitor's live quality name alike (the `metric` label),
so that the two compare measure by measure."""
CALIBRATION_ERROR = "calibrationError"
"""A binary classifier's expected calibration error: a `metric` the monitor measures live, which no bundle holds."""
DRIFT_THRESHOLDS = ("warn", "alert", "breaches", "windows", "seconds")
"""spec.monitoring.drift as a predictor publishes it for the monitor (the `threshold` label); `seconds` is the length
of each window."""
LABEL_DELAY_QUANTILES = ("0.5", "0.9")
"""The quantiles of the time from prediction to outcome that the monitor publishes (the `quantile` label)."""
PREDICTION_FEATURE = "__prediction__"
"""The name the predictions themselves go by among the features whose drift the monitor judges (the `feature`
label of its drift gauges)."""
LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "variant": VARIANTS,
    "action": ACTIONS,
    "problem": PROBLEMS,
    "metric": (*QUALITY_METRICS, CALIBRATION_ERROR),
    "threshold": DRIFT_THRESHOLDS,
    "quantile": LABEL_DELAY_QUANTILES,
}
"""Every value each of these labels takes, wherever it appears."""

# --- the predictor --------------------------------------------------------------------------------------------------

VERSION_LABELS = ("model", "version", "variant")
"""On every predictor series: the ModelDeployment's name, the model version and the predictor's role."""

PREDICTOR_REQUESTS = Family(
    "steward_predictor_requests", "counter", (*VERSION_LABELS, "protocol", "code"), created=True
)
"""Requests answered, by protocol and HTTP status code: the guardrails' error rate."""
PREDICTOR_REQUEST_DURATION = Family(
    "steward_predictor_request_duration_seconds", "histogram", VERSION_LABELS, created=True
)
"""Time to validate and score one request: the latency guardrail."""
PREDICTOR_ROWS = Family("steward_predictor_rows", "counter", VERSION_LABELS)
"""Rows scored: what the pipeline-health alerts divide by."""
PREDICTOR_FEATURE_PROBLEMS = Family(
    "steward_predictor_feature_problems", "counter", (*VERSION_LABELS, "feature", "problem", "action")
)
"""Schema problems, by feature, problem (PROBLEMS) and action (ACTIONS)."""
PREDICTOR_MODEL_INFO = Family(
    "steward_predictor_model_info", "gauge", (*VERSION_LABELS, "digest", "feature_set_version")
)
"""The bundle being served (always 1): the digests a version's predictors loaded."""
PREDICTOR_READY = Family("steward_predictor_ready", "gauge", VERSION_LABELS)
"""1 when the model passed its checks; exported from a pod's start, so its samples show every scrape of the pod."""
PREDICTOR_HOLDOUT = Family("steward_predictor_holdout", "gauge", (*VERSION_LABELS, "metric", "data"))
"""The bundle's held-out results, by measure (QUALITY_METRICS) and the rows they were computed on."""
PREDICTOR_DRIFT_THRESHOLD = Family("steward_predictor_drift_threshold", "gauge", (*VERSION_LABELS, "threshold"))
"""spec.monitoring.drift for this version (DRIFT_THRESHOLDS), which the monitor judges its drift by."""
PREDICTOR_FEATURE_VALUES = Family("steward_predictor_feature_values", "counter", (*VERSION_LABELS, "feature", "bin"))
"""Feature values seen, by the bundle's training bin: live drift's counts."""
PREDICTOR_FEATURE_MISSING = Family("steward_predictor_feature_missing", "counter", (*VERSION_LABELS, "feature"))
"""Feature values that were missing."""
PREDICTOR_PREDICTIONS = Family("steward_predictor_predictions", "counter", (*VERSION_LABELS, "bin"), created=True)
"""Predictions by class or training bin: the prediction-shift guardrail and prediction drift."""
PREDICTOR_SCORES = Family("steward_predictor_scores", "counter", (*VERSION_LABELS, "bin"), created=True)
"""Binary classifiers: the positive class's probability, by training bin."""
PREDICTOR_FEATURE_TRAINING_SHARE = Family(
    "steward_predictor_feature_training_share", "gauge", (*VERSION_LABELS, "feature", "bin")
)
"""Each feature bin's share of the training data: what feature drift is measured against."""
PREDICTOR_PREDICTION_TRAINING_SHARE = Family(
    "steward_predictor_prediction_training_share", "gauge", (*VERSION_LABELS, "bin")
)
"""Each prediction bin's share of the training data's predictions: what prediction drift is measured against."""
PREDICTOR_REPORTED_EVENTS = Family("steward_predictor_reported_events", "counter", ("result",))
"""Prediction events for the monitor: sent, refused by it, or dropped."""

STREAM_LAG = Family("steward_stream_lag_records", "gauge", ("model", "version", "topic", "partition"))
"""A stream's records not yet scored and committed, per version and input partition: the end of the partition less
the consumer group's position, as the worker that owns the partition sees it, once for each version it hosts (the
incumbent, and during a release the challenger: both consider every record). Summed over partitions, a version's lag;
the largest over versions, the stream's."""
STREAM_TRANSACTIONS = Family("steward_stream_transactions", "counter", ("model", "result"))
"""A stream worker's transactions (a batch's outputs, dead letters and offsets), by result: committed, aborted."""
STREAM_HALTED = Family("steward_stream_halted", "gauge", ("model",))
"""1 while a stream worker takes no records because its incumbent dead-letters more than the ceiling allows."""

PREDICTOR_FAMILIES = (
    PREDICTOR_REQUESTS,
    PREDICTOR_REQUEST_DURATION,
    PREDICTOR_ROWS,
    PREDICTOR_FEATURE_PROBLEMS,
    PREDICTOR_MODEL_INFO,
    PREDICTOR_READY,
    PREDICTOR_HOLDOUT,
    PREDICTOR_DRIFT_THRESHOLD,
    PREDICTOR_FEATURE_VALUES,
    PREDICTOR_FEATURE_MISSING,
    PREDICTOR_PREDICTIONS,
    PREDICTOR_SCORES,
    PREDICTOR_FEATURE_TRAINING_SHARE,
    PREDICTOR_PREDICTION_TRAINING_SHARE,
    PREDICTOR_REPORTED_EVENTS,
)
STREAM_FAMILIES = (STREAM_LAG, STREAM_TRANSACTIONS, STREAM_HALTED)
"""A stream worker's own, beside the predictor's families it exports for each version it scores with."""

# --- the monitor ----------------------------------------------------------------------------------------------------

MONITORED_LABELS = ("namespace", "model", "version")
"""On every per-version monitor series: the monitor labels them itself, with the namespace it filed them under."""

MONITOR_EVENTS = Family("steward_monitor_events", "counter", ("kind", "result"))
"""Records received, by kind and result."""
MONITOR_DROPPED_VERSIONS = Family("steward_monitor_dropped_versions", "counter", ("gauges",))
"""Model versions left out of the per-version gauges beyond the cap."""
MONITOR_COMMIT_DURATION = Family("steward_monitor_commit_duration_seconds", "histogram")
"""Time to commit one batch of records."""
MONITOR_COMMIT_RECORDS = Family("steward_monitor_commit_records", "histogram")
"""Records per committed batch."""
MONITOR_QUALITY = Family("steward_monitor_quality", "gauge", (*MONITORED_LABELS, "metric"))
"""Live quality on matured outcomes, by measure (QUALITY_METRICS): the quality gate and the quality alerts."""
MONITOR_PREDICTIONS = Family("steward_monitor_predictions", "gauge", MONITORED_LABELS)
"""Predictions stored in the quality window."""
MONITOR_LABELLED_PREDICTIONS = Family("steward_monitor_labelled_predictions", "gauge", MONITORED_LABELS)
"""Predictions in the quality window whose outcome has arrived."""
MONITOR_LABEL_DELAY = Family("steward_monitor_label_delay_seconds", "gauge", (*MONITORED_LABELS, "quantile"))
"""Time from prediction to outcome, at LABEL_DELAY_QUANTILES."""
MONITOR_DRIFT_PSI = Family("steward_monitor_drift_psi", "gauge", (*MONITORED_LABELS, "feature"))
"""PSI of a feature (or PREDICTION_FEATURE) in the last drift window."""
MONITOR_DRIFT_LEVEL = Family("steward_monitor_drift_level", "gauge", (*MONITORED_LABELS, "feature"))
"""Drift of a feature in the last window: 0 ok, 1 warn, 2 alert."""
MONITOR_DRIFT_ALERTING = Family("steward_monitor_drift_alerting", "gauge", (*MONITORED_LABELS, "feature"))
"""1 while a feature's drift persists at the alert level: the drift alerts and retraining's drift trigger."""
MONITOR_DRIFT_WINDOW_SAMPLES = Family("steward_monitor_drift_window_samples", "gauge", (*MONITORED_LABELS, "feature"))
"""Values of a feature counted in the last drift window."""
MONITOR_DRIFT_UP = Family("steward_monitor_drift_up", "gauge")
"""1 when the last drift window could be read from Prometheus, 0 when not."""

MONITOR_FAMILIES = (
    MONITOR_EVENTS,
    MONITOR_DROPPED_VERSIONS,
    MONITOR_COMMIT_DURATION,
    MONITOR_COMMIT_RECORDS,
    MONITOR_QUALITY,
    MONITOR_PREDICTIONS,
    MONITOR_LABELLED_PREDICTIONS,
    MONITOR_LABEL_DELAY,
    MONITOR_DRIFT_PSI,
    MONITOR_DRIFT_LEVEL,
    MONITOR_DRIFT_ALERTING,
    MONITOR_DRIFT_WINDOW_SAMPLES,
    MONITOR_DRIFT_UP,
)

# --- the operator ---------------------------------------------------------------------------------------------------

OPERATOR_RECONCILES = Family("steward_operator_reconciles", "counter", ("result",))
"""ModelDeployment reconciles, by result."""
OPERATOR_RECONCILE_DURATION = Family("steward_operator_reconcile_duration_seconds", "histogram")
"""Time to reconcile one ModelDeployment."""
OPERATOR_DECISIONS = Family("steward_operator_decisions", "counter", ("reason",))
"""Decisions taken, by reason."""
OPERATOR_PHASE = Family("steward_operator_phase", "gauge", ("namespace", "name", "phase"))
"""1 for the phase each ModelDeployment is in, 0 for the others."""
OPERATOR_TRAFFIC_RATIO = Family("steward_operator_traffic_ratio", "gauge", ("namespace", "name", "role"))
"""Share of live requests each role receives."""

OPERATOR_FAMILIES = (
    OPERATOR_RECONCILES,
    OPERATOR_RECONCILE_DURATION,
    OPERATOR_DECISIONS,
    OPERATOR_PHASE,
    OPERATOR_TRAFFIC_RATIO,
)

FAMILIES = (*PREDICTOR_FAMILIES, *STREAM_FAMILIES, *MONITOR_FAMILIES, *OPERATOR_FAMILIES)
"""Every metric family Steward exports."""
