"""Quality on matured outcomes, a pure computation: one model version's predictions joined with the labels that
have arrived for them, in; accuracy, log loss and ROC AUC (classifiers) or MAE and RMSE (regressors), with label
coverage and delay, out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steward_monitor.records import Label, class_label

# Probabilities are clipped this far from 0 and 1 for log loss, as scikit-learn does for float64.
_EPSILON = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Scored:
    """One prediction of a version, with its outcome when that has arrived."""

    prediction: Label
    score: float | None
    """The positive-class probability of a binary classifier."""
    label: Label | None = None
    delay: float | None = None
    """Seconds from the prediction to the outcome's arrival."""


@dataclass(frozen=True)
class Quality:
    """A version's quality on the predictions whose outcomes are known."""

    predictions: int
    labelled: int
    kind: str
    """classifier or regressor, as the predictions and labels show."""
    metrics: dict[str, float] = field(default_factory=dict)
    """accuracy, logLoss, rocAuc and calibrationError (binary classifiers with scores), or mae, rmse; a metric
    that cannot be computed (one class only) is left out."""
    delay_p50: float | None = None
    delay_p90: float | None = None
    losses: dict[str, Loss] = field(default_factory=dict)
    """For each metric that is a mean over predictions (accuracy, logLoss, mae, rmse), the per-prediction loss it
    averages (a misclassification, the log loss, the absolute and the squared error): what a comparison of two
    versions' quality needs beyond the metric itself."""

    @property
    def coverage(self) -> float:
        """The share of predictions with a known outcome."""
        return self.labelled / self.predictions if self.predictions else 0.0

    def as_json(self) -> dict[str, Any]:
        """As GET /v1/quality answers it."""
        return {
            "kind": self.kind,
            "predictions": self.predictions,
            "labelled": self.labelled,
            "coverage": self.coverage,
            "labelDelaySeconds": {"p50": self.delay_p50, "p90": self.delay_p90},
            "metrics": self.metrics,
            "losses": {
                metric: {"count": loss.count, "mean": loss.mean, "variance": loss.variance}
                for metric, loss in self.losses.items()
            },
        }


@dataclass(frozen=True)
class Loss:
    """The mean and variance of a per-prediction loss over `count` labelled predictions."""

    count: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: np.ndarray) -> Loss:
        return cls(int(values.size), float(np.mean(values)), float(np.var(values)))


def assess(rows: Sequence[Scored]) -> Quality:
    """The quality of one version from its predictions. A classifier is a version whose predictions are text or
    booleans, or carry a score; a regressor's are numbers without one."""
    labelled = [row for row in rows if row.label is not None]
    kind = _kind(rows)
    delays = np.array([row.delay for row in labelled if row.delay is not None], dtype=float)
    quality = Quality(
        predictions=len(rows),
        labelled=len(labelled),
        kind=kind,
        delay_p50=float(np.quantile(delays, 0.5)) if delays.size else None,
        delay_p90=float(np.quantile(delays, 0.9)) if delays.size else None,
    )
    if not labelled:
        return quality
    metrics, losses = _classifier(labelled) if kind == "classifier" else _regressor(labelled)
    return Quality(**{**quality.__dict__, "metrics": metrics, "losses": losses})


def _kind(rows: Sequence[Scored]) -> str:
    numeric = all(isinstance(row.prediction, float) for row in rows)
    return "regressor" if numeric and all(row.score is None for row in rows) else "classifier"


def _classifier(rows: Sequence[Scored]) -> tuple[dict[str, float], dict[str, Loss]]:
    predicted = [class_label(row.prediction) for row in rows]
    actual = [class_label(row.label) for row in rows]
    wrong = np.array([p != a for p, a in zip(predicted, actual, strict=True)], dtype=float)
    metrics = {"accuracy": 1 - float(np.mean(wrong))}
    losses = {"accuracy": Loss.of(wrong)}
    scored = [row for row in rows if row.score is not None]
    if len(scored) != len(rows):
        return metrics, losses
    # A binary classifier's score is the probability of its positive class: the larger label, as scikit-learn
    # orders classes, among those seen.
    classes = sorted(
        {class_label(row.label) for row in rows} | {class_label(row.prediction) for row in rows}, key=_order
    )
    if len(classes) != 2:
        return metrics, losses
    positive = classes[1]
    truth = np.array([class_label(row.label) == positive for row in scored], dtype=float)
    scores = np.array([row.score for row in scored], dtype=float)
    clipped = np.clip(scores, _EPSILON, 1 - _EPSILON)
    log_losses = -(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped))
    metrics["logLoss"] = float(np.mean(log_losses))
    losses["logLoss"] = Loss.of(log_losses)
    metrics["calibrationError"] = _calibration_error(truth, scores)
    auc = _roc_auc(truth, scores)
    if auc is not None:
        metrics["rocAuc"] = auc
    return metrics, losses


def _calibration_error(truth: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: over ten equal-width score bins, the gap between the mean score and the share
    of positives, weighted by the bin's share of predictions. 0 for scores that mean what they say."""
    index = np.minimum((scores * bins).astype(int), bins - 1)
    error = 0.0
    for bin_ in np.unique(index):
        members = index == bin_
        error += members.mean() * abs(float(scores[members].mean()) - float(truth[members].mean()))
    return float(error)


def _regressor(rows: Sequence[Scored]) -> tuple[dict[str, float], dict[str, Loss]]:
    # An outcome that is not a number says nothing about a regressor's error.
    pairs = [(float(row.prediction), row.label) for row in rows if isinstance(row.label, float)]
    if not pairs:
        return {}, {}
    errors = np.array([predicted - actual for predicted, actual in pairs], dtype=float)
    metrics = {"mae": float(np.mean(np.abs(errors))), "rmse": float(math.sqrt(np.mean(errors**2)))}
    return metrics, {"mae": Loss.of(np.abs(errors)), "rmse": Loss.of(errors**2)}


def _roc_auc(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """The probability that a random positive outranks a random negative (ties count half): the Mann-Whitney
    statistic over average ranks. None when only one class has arrived."""
    positives = int(truth.sum())
    negatives = truth.size - positives
    if not positives or not negatives:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=float)
    sorted_scores = scores[order]
    start = 0
    while start < scores.size:
        end = start
        while end + 1 < scores.size and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    positive_ranks = float(ranks[truth == 1].sum())
    return (positive_ranks - positives * (positives + 1) / 2) / (positives * negatives)


def _order(label: str) -> tuple[int, float, str]:
    try:
        return 0, float(label), label
    except ValueError:
        return 1, 0.0, label
