"""Anytime-valid comparisons of a challenger with its incumbent, safe to check after every batch of requests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

Verdict = Literal["pass", "fail", "inconclusive", "noData"]
Floats = NDArray[np.float64]

RELEVANT_RATE_INCREASE = 0.01
"""Default effect for rates: one percentage point more errors (or more requests slower than the incumbent's p95)
is the smallest increase a guardrail exists to catch quickly. The mixture is tuned for it (`mixing_variance`);
smaller increases are still caught, later, and larger ones sooner."""

_ITERATIONS = 50
_CONVERGED = 1e-12
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


@dataclass(frozen=True)
class Comparison:
    """One metric compared between challenger and incumbent; the fields are those of the operator's Evidence.

    For a rate, `incumbent` and `challenger` are the two estimated rates and `lower`/`upper` bound their difference
    (challenger - incumbent); `distributions` says what they are for whole distributions.
    """

    metric: str
    incumbent: float | None
    challenger: float | None
    lower: float | None
    upper: float | None
    incumbent_samples: int
    challenger_samples: int
    verdict: Verdict

    @property
    def difference(self) -> float | None:
        """The estimated difference (challenger - incumbent), or distance; None without data on both arms."""
        if self.incumbent is None or self.challenger is None:
            return None
        return self.challenger - self.incumbent

    @property
    def credibly_worse(self) -> bool:
        """The challenger is worse than the incumbent by more than the tolerance, at the test's alpha."""
        return self.verdict == "fail"

    @property
    def credibly_not_worse(self) -> bool:
        """Non-inferiority: the challenger is worse by less than the tolerance, at the test's alpha."""
        return self.verdict == "pass"


def mixing_variance(effect: float, alpha: float) -> float:
    """Variance of the normal mixture over differences, tuned so the boundary is tightest where `effect` is found.

    A mixture SPRT with mixing variance tau^2 has a boundary that, in units of the estimate's standard error
    sqrt(V), is narrowest at V = tau^2 / x with x = 2 L + log(1 + x), L = log(1 / (2 alpha)) (Howard et al. 2021,
    one-sided normal mixture, whose boundary is close to the two-sided one at 2 alpha: the narrowest boundary lands
    within 1% of `effect` for alpha <= 0.1, 3% for alpha <= 0.2). Choosing tau so that an increase of exactly
    `effect` reaches that narrowest boundary makes such an increase the one detected with the fewest requests; the
    choice never affects validity, only which effects are found soonest.
    """
    check_alpha(alpha)
    if not effect > 0:
        raise ValueError(f"effect must be positive, got {effect}")
    log_ratio = math.log(1 / (2 * alpha))
    ratio = 2 * log_ratio
    for _ in range(_ITERATIONS):  # A contraction: each step shrinks the error by a factor 1 / (1 + x).
        following = 2 * log_ratio + math.log1p(ratio)
        if abs(following - ratio) < _CONVERGED:
            break
        ratio = following
    # The boundary at that point is k * sqrt(V) with k^2 = 2 (1 + 1/x) (L + log(1 + x) / 2).
    width_squared = 2 * (1 + 1 / ratio) * (log_ratio + 0.5 * math.log1p(ratio))
    return ratio * effect**2 / width_squared


def difference_bounds(
    incumbent_events: ArrayLike,
    incumbent_samples: ArrayLike,
    challenger_events: ArrayLike,
    challenger_samples: ArrayLike,
    *,
    alpha: float = 0.05,
    effect: float = RELEVANT_RATE_INCREASE,
) -> tuple[Floats, Floats]:
    """Anytime-valid lower and upper bounds of challenger rate - incumbent rate, elementwise over arrays.

    Each bound on its own holds at every look at once with probability at least 1 - alpha; together they form a
    1 - 2 alpha confidence sequence. NaN where an arm has no observations. Like any bound built on a plug-in
    variance, they are not exactly monotone in the counts while a few hundred requests leave them wide.
    Raises ValueError for counts that are not finite, are negative, or have more events than samples.
    """
    check_alpha(alpha)
    x_i, n_i, x_c, n_c = (
        np.asarray(value, dtype=np.float64)
        for value in (incumbent_events, incumbent_samples, challenger_events, challenger_samples)
    )
    if not all(np.isfinite(value).all() for value in (x_i, n_i, x_c, n_c)):
        raise ValueError("counts must be finite numbers, not NaN or infinite")
    if np.any(n_i < 0) or np.any(n_c < 0) or np.any(x_i < 0) or np.any(x_c < 0):
        raise ValueError("counts must not be negative")
    if np.any(x_i > n_i) or np.any(x_c > n_c):
        raise ValueError("events cannot outnumber samples")
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = x_c / n_c - x_i / n_i
        variance = _variance(x_i, n_i, x_c, n_c)
        half_width = radius(variance, mixing_variance(effect, alpha), alpha)
    lower = np.clip(estimate - half_width, -1.0, 1.0)
    upper = np.clip(estimate + half_width, -1.0, 1.0)
    return lower, upper


def compare_rates(
    metric: str,
    incumbent_events: int,
    incumbent_samples: int,
    challenger_events: int,
    challenger_samples: int,
    *,
    tolerance: float = 0.0,
    alpha: float = 0.05,
    effect: float = RELEVANT_RATE_INCREASE,
    minimum_samples: int = 0,
) -> Comparison:
    """Guardrail on a bad-event rate: fail once the challenger's rate is credibly above the incumbent's + tolerance.

    Tests H0: p_challenger - p_incumbent <= tolerance at every look; `fail` when the lower bound of the difference
    is above the tolerance, `pass` when the upper bound is below it, `noData` when an arm has no observations, and
    `inconclusive` otherwise or while either arm has fewer than `minimum_samples`. Raises ValueError for counts
    that are not finite, are negative, or have more events than samples, even without data: such a count is no
    evidence of anything, not even of nothing.
    """
    rate_i = incumbent_events / incumbent_samples if incumbent_samples > 0 else None
    rate_c = challenger_events / challenger_samples if challenger_samples > 0 else None
    lower: float | None = None
    upper: float | None = None
    verdict: Verdict = "noData"
    # Validation runs even without data, so a malformed count never hides behind noData.
    low, high = difference_bounds(
        incumbent_events, incumbent_samples, challenger_events, challenger_samples, alpha=alpha, effect=effect
    )
    if rate_i is not None and rate_c is not None:
        lower, upper = float(low), float(high)
        verdict = verdict_of(lower, upper, tolerance)
    comparison = Comparison(metric, rate_i, rate_c, lower, upper, incumbent_samples, challenger_samples, verdict)
    return require_evidence(comparison, minimum_samples)


def non_inferiority(
    metric: str,
    incumbent_events: int,
    incumbent_samples: int,
    challenger_events: int,
    challenger_samples: int,
    *,
    margin: float,
    alpha: float = 0.05,
    effect: float = RELEVANT_RATE_INCREASE,
    minimum_samples: int = 0,
) -> Comparison:
    """Promotion gate on a bad-event rate: pass once the challenger is credibly not worse than incumbent + margin.

    The same confidence sequence as `compare_rates`, read from the other side: `pass` when the upper bound of
    p_challenger - p_incumbent is below `margin`. For a quality metric where higher is better (accuracy), count
    the bad events (misclassifications).
    """
    return compare_rates(
        metric,
        incumbent_events,
        incumbent_samples,
        challenger_events,
        challenger_samples,
        tolerance=margin,
        alpha=alpha,
        effect=effect,
        minimum_samples=minimum_samples,
    )


RELEVANT_STANDARDIZED_CHANGE = 0.1
"""Default effect for a mean over predictions (a loss), in units of its spread per prediction: a tenth of a
standard deviation, which a fixed test at 80 % power finds in about 1,600 predictions per version."""


def compare_means(
    metric: str,
    incumbent: tuple[int, float, float],
    challenger: tuple[int, float, float],
    *,
    tolerance: float = 0.0,
    alpha: float = 0.05,
    effect: float = RELEVANT_STANDARDIZED_CHANGE,
    minimum_samples: int = 0,
) -> Comparison:
    """Guardrail on a mean per prediction where higher is worse (a loss), from each version's (count, mean,
    variance): fail once the challenger's mean is credibly above the incumbent's + tolerance, pass once credibly
    below it. The same normal-mixture confidence sequence as the rates, its variance the larger of the two-sample
    plug-in and the pooled one (which also holds the difference of the means), and its mixture tuned to `effect`
    standard deviations of the pooled spread."""
    check_alpha(alpha)
    (n_i, mean_i, variance_i), (n_c, mean_c, variance_c) = incumbent, challenger
    values = (n_i, mean_i, variance_i, n_c, mean_c, variance_c)
    if not all(math.isfinite(value) for value in values) or min(n_i, n_c, variance_i, variance_c) < 0:
        raise ValueError(f"counts, means and variances must be finite and not negative, got {values}")
    if n_i == 0 or n_c == 0:
        return Comparison(metric, None, None, None, None, n_i, n_c, "noData")
    total = n_i + n_c
    pooled = (n_i * variance_i + n_c * variance_c) / total + n_i * n_c * (mean_c - mean_i) ** 2 / total**2
    variance = max(variance_i / n_i + variance_c / n_c, pooled * (1 / n_i + 1 / n_c))
    if variance == 0:  # Every loss the same: nothing tells the versions apart yet.
        return require_evidence(Comparison(metric, mean_i, mean_c, None, None, n_i, n_c, "inconclusive"), 0)
    spread = math.sqrt(pooled) or math.sqrt(variance)
    half_width = float(radius(np.asarray(variance), mixing_variance(effect * spread, alpha), alpha))
    difference = mean_c - mean_i
    lower, upper = difference - half_width, difference + half_width
    comparison = Comparison(metric, mean_i, mean_c, lower, upper, n_i, n_c, verdict_of(lower, upper, tolerance))
    return require_evidence(comparison, minimum_samples)


def split_alpha(alpha: float, guardrails: Sequence[str] | Mapping[str, float]) -> dict[str, float]:
    """Bonferroni: each guardrail's share of alpha, equal for a list of names, proportional to weights for a
    mapping, so the chance that any guardrail raises a false alarm stays at most alpha."""
    check_alpha(alpha)
    weights = dict(guardrails) if isinstance(guardrails, Mapping) else dict.fromkeys(guardrails, 1.0)
    if not weights:
        raise ValueError("no guardrails to share alpha between")
    if any(not weight > 0 for weight in weights.values()):
        raise ValueError("guardrail weights must be positive")
    total = math.fsum(weights.values())
    return {name: alpha * weight / total for name, weight in weights.items()}


def require_evidence(comparison: Comparison, minimum_samples: int) -> Comparison:
    """No pass or fail until each arm has at least `minimum_samples`: the bounds rely on a normal approximation
    that a handful of requests does not support. Skipping looks never costs validity."""
    if minimum_samples < 0:
        raise ValueError(f"minimum_samples must not be negative, got {minimum_samples}")
    enough = min(comparison.incumbent_samples, comparison.challenger_samples) >= minimum_samples
    if comparison.verdict in ("pass", "fail") and not enough:
        return replace(comparison, verdict="inconclusive")
    return comparison


@dataclass(frozen=True)
class ThresholdRule:
    """The check Flagger and Argo Rollouts make: the challenger's point estimate against a threshold derived from
    the incumbent's, at every look. Kept for comparison only; peeking at point estimates like this inflates false
    alarms with every look, which is why Steward decides on `compare_rates`."""

    margin: float | None = 0.005
    """Breach when challenger > incumbent + margin (absolute)."""
    ratio: float | None = None
    """Breach when challenger > ratio * incumbent (relative)."""
    consecutive: int = 1
    """Roll back after this many breaches in a row."""

    def __post_init__(self) -> None:
        if self.margin is None and self.ratio is None:
            raise ValueError("a threshold rule needs a margin, a ratio or both")
        if self.consecutive < 1:
            raise ValueError(f"consecutive must be at least 1, got {self.consecutive}")

    def breached(self, incumbent_rate: ArrayLike, challenger_rate: ArrayLike) -> NDArray[np.bool_]:
        """Whether each look breaches the threshold (any of the configured limits)."""
        incumbent = np.asarray(incumbent_rate, dtype=np.float64)
        challenger = np.asarray(challenger_rate, dtype=np.float64)
        breach = np.zeros(np.broadcast(incumbent, challenger).shape, dtype=np.bool_)
        if self.margin is not None:
            breach |= challenger > incumbent + self.margin
        if self.ratio is not None:
            breach |= challenger > self.ratio * incumbent
        return breach


def first_alarm(alarms: ArrayLike, consecutive: int = 1) -> NDArray[np.int64]:
    """Index of the look (last axis) at which `consecutive` alarms in a row first complete; -1 if never."""
    if consecutive < 1:
        raise ValueError(f"consecutive must be at least 1, got {consecutive}")
    flags = np.asarray(alarms, dtype=np.bool_)
    counts = np.cumsum(flags, axis=-1, dtype=np.int64)
    earlier = np.zeros_like(counts)
    earlier[..., consecutive:] = counts[..., :-consecutive]
    fired = counts - earlier >= consecutive
    index = np.argmax(fired, axis=-1).astype(np.int64)
    return np.where(fired.any(axis=-1), index, -1)


def verdict_of(lower: float, upper: float, tolerance: float) -> Verdict:
    """fail above the tolerance, pass below it, inconclusive while the bounds straddle it."""
    if lower > tolerance:
        return "fail"
    if upper < tolerance:
        return "pass"
    return "inconclusive"


def _variance(x_i: Floats, n_i: Floats, x_c: Floats, n_c: Floats) -> Floats:
    """Plug-in variance of the estimated difference, kept from underestimating where a normal approximation is
    weakest: few events, or one arm much smaller than the other (a 5 % canary step)."""
    # One pseudo-event and one pseudo-success per arm (Agresti & Caffo 2000) keep the variance away from zero
    # when no or all requests failed.
    rate_i = (x_i + 1) / (n_i + 2)
    rate_c = (x_c + 1) / (n_c + 2)
    # A small arm that happened to see few events would otherwise look precise exactly when its estimate is
    # lowest, and the bound on that side would run ahead of the truth. The pooled rate is what both arms share
    # when they do not differ; taking the larger of the two spreads per arm only ever widens the bounds.
    pooled = (x_i + x_c + 1) / (n_i + n_c + 2)
    spread = pooled * (1 - pooled)
    spread_i = np.maximum(rate_i * (1 - rate_i), spread)
    spread_c = np.maximum(rate_c * (1 - rate_c), spread)
    variance: Floats = spread_i / n_i + spread_c / n_c
    return variance


def radius(variance: Floats, mixing: float, alpha: float) -> Floats:
    """Half-width of the one-sided normal-mixture boundary for an estimate with this variance.

    The half-normal mixture over alternatives above theta, with mixing variance tau^2, has likelihood ratio
    2 / sqrt(1 + x) * exp(z^2 / 2) * Phi(z), x = tau^2 / V, z = (estimate - theta) / sqrt(V (1 + 1/x)).
    By Ville's inequality it exceeds 1 / alpha at any look with probability at most alpha under theta; the
    bound is where it equals 1 / alpha. With V estimated by plug-in this is an asymptotic confidence sequence
    (Waudby-Smith et al. 2021, time-uniform central limit theory).
    """
    ratio = mixing / variance
    target = math.log(1 / (2 * alpha)) + 0.5 * np.log1p(ratio)
    z = _solve_boundary(target)
    radius: Floats = z * np.sqrt(variance * (1 + 1 / ratio))
    return radius


def _solve_boundary(target: Floats) -> Floats:
    # z^2/2 + log Phi(z) is increasing and convex, and the start sqrt(2 target) lies left of the root, so the
    # first Newton step lands right of it and every later step stays there: each iterate is a conservative bound.
    z: Floats = np.sqrt(2 * np.maximum(target, 0.0))
    for _ in range(_ITERATIONS):
        finite = np.isfinite(z)
        tail = np.zeros_like(z)
        tail[finite] = 0.5 * _erfc(z[finite] / math.sqrt(2))
        cdf = 1 - tail
        density = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        step = (0.5 * z * z + np.log1p(-tail) - target) / (z + density / cdf)
        step = np.where(finite, step, 0.0)
        z = z - step
        if not np.any(np.abs(step) > _CONVERGED * np.maximum(1.0, z)):
            break
    return z


def check_alpha(alpha: float) -> None:
    # One-sided bounds above alpha = 0.5 would sit on the wrong side of the estimate.
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
