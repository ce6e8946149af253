"""The Validating stage's held-out comparison, pure: the challenger's held-out results against the incumbent's, on
rollout.validation.metric or else the metric of the model's kind both versions report, within
rollout.validation.tolerance. `deciding` takes its move into the release decision."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from steward_operator import specs

HIGHER_IS_BETTER = frozenset({"accuracy", "rocAuc", "r2"})
"""Held-out metrics where a larger value is better; for logLoss, mae and rmse a smaller one is."""
CLASSIFIER_METRICS = ("rocAuc", "accuracy", "logLoss")
"""Held-out metrics of a classifier, in the order validation prefers them when rollout.validation.metric is unset."""
REGRESSOR_METRICS = ("rmse", "mae", "r2")
"""Held-out metrics of a regressor, in the order validation prefers them when rollout.validation.metric is unset."""

Move = Literal["hold", "advance", "rollback"]
"""What the held-out comparison can decide: wait for results, let the challenger on, or keep it from traffic."""


@dataclass(frozen=True)
class HeldOut:
    """One version's held-out results (the predictor's steward_predictor_holdout gauge)."""

    metrics: Mapping[str, float]
    """Metric name (accuracy, rocAuc, logLoss, mae, rmse, r2) to value."""
    data: str
    """Fingerprint of the held-out data the results were measured on."""


@dataclass(frozen=True)
class Holdouts:
    """Both versions' held-out results, as far as they are known; None for a version not reported yet."""

    incumbent: HeldOut | None = None
    challenger: HeldOut | None = None


def compare_holdouts(
    validation: specs.Validation, holdouts: Holdouts, following: str
) -> tuple[Move, str, tuple[specs.Evidence, ...]]:
    """The move on held-out results, the rule that fired (one sentence with its numbers) and its evidence;
    `following` is the stage the challenger goes on to when it passes."""
    incumbent, challenger = _reported(holdouts.incumbent), _reported(holdouts.challenger)
    metric = validation.metric or _default_metric(incumbent, challenger)
    if metric is None:
        return "hold", "waiting for held-out results: neither version has reported a held-out metric yet", ()
    value_i = None if incumbent is None else incumbent.get(metric)
    value_c = None if challenger is None else challenger.get(metric)
    if value_i is None or value_c is None:
        missing = [arm for arm, value in (("incumbent", value_i), ("challenger", value_c)) if value is None]
        verb = "have" if len(missing) > 1 else "has"
        evidence = specs.Evidence(metric=metric, incumbent=value_i, challenger=value_c, verdict="noData")
        rule = f"waiting for held-out results: the {' and the '.join(missing)} {verb} not reported {metric} yet"
        return "hold", rule, (evidence,)

    higher = metric in HIGHER_IS_BETTER
    allowance = validation.tolerance * abs(value_i)
    limit = value_i - allowance if higher else value_i + allowance
    passed = value_c >= limit if higher else value_c <= limit
    evidence = specs.Evidence(
        metric=metric, incumbent=value_i, challenger=value_c, verdict="pass" if passed else "fail"
    )
    data_i, data_c = (held_out.data if held_out else "" for held_out in (holdouts.incumbent, holdouts.challenger))
    where = (
        f"measured on the same held-out data ({data_i})"
        if data_i and data_i == data_c
        else f"measured across different held-out sets ({data_i or 'unknown'} and {data_c or 'unknown'})"
    )
    bound = f"{'at least' if higher else 'at most'} {limit:.6g} allowed with tolerance {validation.tolerance:.2%}"
    values = f"the challenger's held-out {metric} {value_c:.6g}"
    if passed:
        rule = (
            f"{values} is not worse than the incumbent's {value_i:.6g} beyond the tolerance ({bound}), {where}:"
            f" on to {following}"
        )
        return "advance", rule, (evidence,)
    rule = (
        f"{values} is worse than the incumbent's {value_i:.6g} beyond the tolerance ({bound}), {where}:"
        " it never receives traffic"
    )
    return "rollback", rule, (evidence,)


def _reported(held_out: HeldOut | None) -> dict[str, float] | None:
    """The results a version reported; a value that is not a finite number proves nothing, as if not reported."""
    if held_out is None:
        return None
    found = {name: _finite(value) for name, value in held_out.metrics.items()}
    return {name: value for name, value in found.items() if value is not None}


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _default_metric(incumbent: Mapping[str, float] | None, challenger: Mapping[str, float] | None) -> str | None:
    """rocAuc for a classifier, rmse for a regressor, or the next metric of that kind both versions report."""
    reported = {*(incumbent or {}), *(challenger or {})}
    if reported & set(CLASSIFIER_METRICS):
        preferred = CLASSIFIER_METRICS
    elif reported & set(REGRESSOR_METRICS):
        preferred = REGRESSOR_METRICS
    else:
        return None
    both = set(incumbent or {}) & set(challenger or {})
    return next((metric for metric in preferred if metric in both), preferred[0])
