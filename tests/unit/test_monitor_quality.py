"""Quality on matured outcomes against scikit-learn's own metrics on the same rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, mean_squared_error, roc_auc_score

from steward_monitor.quality import Scored, assess


def test_a_binary_classifier_is_judged_as_scikit_learn_judges_it() -> None:
    rng = np.random.default_rng(3)
    truth = rng.random(500) < 0.4
    # Rounded scores make ties, which ROC AUC must count half.
    scores = np.round(np.clip(truth * 0.3 + rng.random(500) * 0.7, 0, 1), 1)
    predicted = scores >= 0.5
    rows = [
        Scored("yes" if p else "no", float(s), "yes" if t else "no", delay=float(day) * 86_400)
        for p, s, t, day in zip(predicted, scores, truth, range(500), strict=True)
    ]
    quality = assess(rows)
    assert (quality.kind, quality.predictions, quality.labelled, quality.coverage) == ("classifier", 500, 500, 1.0)
    assert quality.metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert quality.metrics["rocAuc"] == pytest.approx(roc_auc_score(truth, scores))
    assert quality.metrics["logLoss"] == pytest.approx(log_loss(truth, np.clip(scores, 1e-15, 1 - 1e-15)), rel=1e-6)
    assert quality.delay_p50 == pytest.approx(np.quantile(np.arange(500) * 86_400.0, 0.5))


def test_only_predictions_with_outcomes_count_and_coverage_says_how_many() -> None:
    rows = [Scored(1.0, 0.9, 1.0, delay=60.0), Scored(0.0, 0.2, 1.0, delay=120.0), Scored(1.0, 0.8), Scored(0.0, 0.1)]
    quality = assess(rows)
    assert (quality.predictions, quality.labelled, quality.coverage) == (4, 2, 0.5)
    assert quality.metrics["accuracy"] == 0.5
    assert "rocAuc" not in quality.metrics  # Only one class of outcome has arrived.
    assert quality.delay_p50 == 90.0
    assert quality.delay_p90 == pytest.approx(114.0)


def test_a_multiclass_classifier_without_scores_gets_accuracy_only() -> None:
    rows = [
        Scored("barolo", None, "barolo"),
        Scored("barbera", None, "barolo"),
        Scored("grignolino", None, "grignolino"),
    ]
    quality = assess(rows)
    assert quality.kind == "classifier"
    assert quality.metrics == {"accuracy": pytest.approx(2 / 3)}


def test_a_regressor_is_judged_on_its_errors() -> None:
    rng = np.random.default_rng(4)
    actual = rng.normal(150, 40, 300)
    predicted = actual + rng.normal(0, 20, 300)
    quality = assess([Scored(float(p), None, float(a)) for p, a in zip(predicted, actual, strict=True)])
    assert quality.kind == "regressor"
    assert quality.metrics["mae"] == pytest.approx(mean_absolute_error(actual, predicted))
    assert quality.metrics["rmse"] == pytest.approx(np.sqrt(mean_squared_error(actual, predicted)))


def test_nothing_labelled_yet_is_no_metrics_not_zero() -> None:
    quality = assess([Scored("yes", 0.7), Scored("no", 0.2)])
    assert (quality.labelled, quality.coverage, quality.metrics, quality.delay_p50) == (0, 0.0, {}, None)
    assert assess([]).coverage == 0.0


def test_calibration_error_is_small_for_scores_that_mean_what_they_say() -> None:
    rng = np.random.default_rng(8)
    scores = rng.random(20_000)
    honest = rng.random(20_000) < scores
    overconfident = rng.random(20_000) < scores**3

    def error(truth: np.ndarray) -> float:
        rows = [Scored(bool(s >= 0.5), float(s), bool(t)) for s, t in zip(scores, truth, strict=True)]
        return assess(rows).metrics["calibrationError"]

    assert error(honest) < 0.02
    assert error(overconfident) > 0.15


def test_calibration_error_by_hand() -> None:
    # Bin 0.0-0.1: scores 0.05, 0.05, one positive -> |0.05 - 0.5| x 2/4; bin 0.9-1.0: 0.95, 0.95, both positive.
    rows = [Scored(0.0, 0.05, 0.0), Scored(0.0, 0.05, 1.0), Scored(1.0, 0.95, 1.0), Scored(1.0, 0.95, 1.0)]
    assert assess(rows).metrics["calibrationError"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)


def test_each_mean_metric_comes_with_the_loss_it_averages() -> None:
    rng = np.random.default_rng(5)
    truth = rng.random(400) < 0.5
    scores = np.clip(truth * 0.4 + rng.random(400) * 0.6, 0.01, 0.99)
    rows = [Scored(bool(s >= 0.5), float(s), bool(t)) for s, t in zip(scores, truth, strict=True)]
    quality = assess(rows)
    wrong = quality.losses["accuracy"]
    assert wrong.count == 400
    assert wrong.mean == pytest.approx(1 - quality.metrics["accuracy"])
    assert wrong.variance == pytest.approx(wrong.mean * (1 - wrong.mean))
    assert quality.losses["logLoss"].mean == pytest.approx(quality.metrics["logLoss"])
    actual = rng.normal(0, 1, 300)
    errors = rng.normal(0, 0.5, 300)
    regressor = assess([Scored(float(a + e), None, float(a)) for a, e in zip(actual, errors, strict=True)])
    assert regressor.losses["mae"].mean == pytest.approx(regressor.metrics["mae"])
    assert regressor.losses["mae"].variance == pytest.approx(np.var(np.abs(errors)))
    assert regressor.losses["rmse"].mean == pytest.approx(regressor.metrics["rmse"] ** 2)
    assert regressor.as_json()["losses"]["rmse"]["count"] == 300
