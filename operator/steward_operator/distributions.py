"""Anytime-valid comparisons of whole distributions: a challenger's predictions against its incumbent's over every
bin at once, and its latencies over the whole histogram."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from steward_operator.sequential import (
    Comparison,
    check_alpha,
    mixing_variance,
    radius,
    require_evidence,
    verdict_of,
)

RELEVANT_SHIFT = 0.1
"""Default effect for a shift of distributions, in chi-square distance per request (the sum over bins of the squared
share difference over the share): ten even bins moving two percentage points each are 0.04, ten points moved
from one of them to another 0.27. The mixture is tuned between the two, so both are found about as soon as a
chi-square test with one look would find them."""

RELEVANT_SLOWDOWN = 0.1
"""Default effect for latency: a challenger request slower than an incumbent's in 60 % of pairs rather than 50 %
(about 20 % slower at every quantile, for latencies spread as the predictors' usually are)."""

_SEARCHED = np.geomspace(1e-3, 1e4, 400)


def compare_distributions(
    metric: str,
    incumbent_counts: Sequence[int],
    challenger_counts: Sequence[int],
    *,
    tolerance: float = 0.1,
    alpha: float = 0.05,
    effect: float = RELEVANT_SHIFT,
    minimum_samples: int = 0,
) -> Comparison:
    """Guardrail on a shift between two categorical distributions (for example predictions per bin), in total
    variation distance: fail once the distance is credibly above `tolerance`, pass once credibly below it.

    The shares' difference vector gets one confidence ellipsoid over all bins at once: Pearson's chi-square
    statistic (each bin's variance the larger of the two versions' own and the pooled one, so the ellipsoid only
    widens) against a normal-mixture boundary, which holds at every look with probability 1 - alpha. The distance
    bounds are the least and the most total variation the ellipsoid allows, so a shift spread over many bins is
    found about as soon as a chi-square test with one look would find it.
    """
    counts_i = np.asarray(incumbent_counts, dtype=np.float64)
    counts_c = np.asarray(challenger_counts, dtype=np.float64)
    if counts_i.ndim != 1 or counts_i.shape != counts_c.shape or counts_i.size < 2:
        raise ValueError("both arms need counts for the same bins, at least two of them")
    if not (np.isfinite(counts_i).all() and np.isfinite(counts_c).all()):
        raise ValueError("counts must be finite numbers, not NaN or infinite")
    if np.any(counts_i < 0) or np.any(counts_c < 0):
        raise ValueError("counts must not be negative")
    if not 0 <= tolerance <= 1:
        raise ValueError(f"tolerance is a total variation distance in [0, 1], got {tolerance}")
    check_alpha(alpha)
    n_i, n_c = int(counts_i.sum()), int(counts_c.sum())
    if n_i == 0 or n_c == 0:
        return Comparison(metric, None, None, None, None, n_i, n_c, "noData")
    bins = counts_i.size
    difference = counts_c / n_c - counts_i / n_i
    # A pseudo-count spread over the bins keeps an empty bin's variance above zero. In units of `scale`.
    scale = 1 / n_i + 1 / n_c
    smoothed_i, smoothed_c = ((counts + 1 / bins) / (n + 1) for counts, n in ((counts_i, n_i), (counts_c, n_c)))
    pooled = (counts_i + counts_c + 1 / bins) / (n_i + n_c + 1)
    spread = np.maximum((smoothed_i / n_i + smoothed_c / n_c) / scale, pooled)
    chi_square = float(np.sum(difference**2 / spread)) / scale
    boundary = chi_square_boundary(scale, _mixing(effect, bins - 1, alpha), bins - 1, alpha)
    reach = math.sqrt(boundary * scale * float(spread.sum()))
    distance = 0.5 * float(np.abs(difference).sum())
    # The least L1 norm in the ellipsoid is at least s'd - sqrt(boundary s'Ms) for any |s| <= 1 (duality): two
    # such s, the signs of the difference and the direction towards the ellipsoid's centre.
    toward = difference / spread
    steepest = float(np.abs(toward).max())
    centred = (
        math.sqrt(chi_square) * (math.sqrt(chi_square) - math.sqrt(boundary)) * scale / steepest if steepest else 0
    )
    lower = 0.5 * max(0.0, 2 * distance - reach, centred)
    upper = min(1.0, distance + 0.5 * reach)
    comparison = Comparison(metric, 0.0, distance, lower, upper, n_i, n_c, verdict_of(lower, upper, tolerance))
    return require_evidence(comparison, minimum_samples)


def chi_square_boundary(scale: float, mixing: float, dimensions: int, alpha: float) -> float:
    """The chi-square value a normal mixture over `dimensions` directions reaches 1 / alpha at, for an estimate
    whose covariance is `scale` times the per-request one (1/n_i + 1/n_c for two arms); `mixing` is the mixture's
    variance in per-request units. Its likelihood ratio is (1 + x)^(-d/2) exp(x / (1 + x) chi^2 / 2) with
    x = mixing / scale, so by Ville's inequality the statistic crosses this at any look with probability at most
    alpha when the arms do not differ."""
    ratio = mixing / scale
    return (1 + 1 / ratio) * (2 * math.log(1 / alpha) + dimensions * math.log1p(ratio))


def _mixing(noncentrality: float, dimensions: int, alpha: float) -> float:
    """The mixture variance that finds a shift of this noncentrality per request soonest: the ratio x where the
    boundary is lowest, reached when the expected statistic (noncentrality n + dimensions) meets it."""
    boundaries = (1 + 1 / _SEARCHED) * (2 * math.log(1 / alpha) + dimensions * np.log1p(_SEARCHED))
    best = int(np.argmin(boundaries))
    requests = max(float(boundaries[best]) - dimensions, 1.0) / noncentrality
    return float(_SEARCHED[best]) / requests


def compare_latencies(
    metric: str,
    incumbent: Mapping[float, float],
    challenger: Mapping[float, float],
    *,
    tolerance: float = 0.0,
    alpha: float = 0.05,
    effect: float = RELEVANT_SLOWDOWN,
    minimum_samples: int = 0,
) -> Comparison:
    """Guardrail on latency over the whole histogram: how much more often a challenger request is slower than an
    incumbent's than the other way round, from two cumulative histograms on the same bucket boundaries (Prometheus'
    `le` buckets, +Inf included). `incumbent` is 1/2 by definition, `challenger` the chance that a challenger
    request is slower than an incumbent one (half of those in the same bucket), and the bounds are of their
    difference: fail once it is credibly above `tolerance`.

    The estimate is the Mann-Whitney statistic; its variance the larger of its two-sample plug-in and its value
    when the versions do not differ (ties in buckets included), against the same normal-mixture confidence
    sequence the rate guardrails use. Requests in one bucket tie whatever the versions, so bucketing never makes
    an equal challenger look slower.
    """
    if set(incumbent) != set(challenger):
        raise ValueError("both arms need latency buckets on the same boundaries")
    check_alpha(alpha)
    bounds = sorted(incumbent)
    cumulative_i = np.asarray([incumbent[bound] for bound in bounds], dtype=np.float64)
    cumulative_c = np.asarray([challenger[bound] for bound in bounds], dtype=np.float64)
    per_i = np.diff(cumulative_i, prepend=0.0)
    per_c = np.diff(cumulative_c, prepend=0.0)
    if not (np.isfinite(per_i).all() and np.isfinite(per_c).all()) or np.any(per_i < 0) or np.any(per_c < 0):
        raise ValueError("latency buckets must be finite, non-negative and cumulative")
    n_i, n_c = int(per_i.sum()), int(per_c.sum())
    if n_i == 0 or n_c == 0:
        return Comparison(metric, None, None, None, None, n_i, n_c, "noData")
    shares_i, shares_c = per_i / n_i, per_c / n_c
    # Each request's placement: the share of the other version's requests it is slower than, ties counted half.
    below_i = np.cumsum(shares_i) - shares_i / 2
    below_c = np.cumsum(shares_c) - shares_c / 2
    slower = float(shares_c @ below_i)
    variance = _placement_variance(shares_c, below_i) / n_c + _placement_variance(shares_i, below_c) / n_i
    pooled = (per_i + per_c) / (n_i + n_c)
    null = _placement_variance(pooled, np.cumsum(pooled) - pooled / 2) * (1 / n_i + 1 / n_c)
    spread = max(variance, null)
    # Every request of both versions in one bucket: nothing tells them apart yet.
    half_width = float(radius(np.asarray(spread), mixing_variance(effect, alpha), alpha)) if spread > 0 else 1.0
    estimate = slower - 0.5
    lower, upper = max(-0.5, estimate - half_width), min(0.5, estimate + half_width)
    comparison = Comparison(metric, 0.5, slower, lower, upper, n_i, n_c, verdict_of(lower, upper, tolerance))
    return require_evidence(comparison, minimum_samples)


def _placement_variance(shares: np.ndarray, placements: np.ndarray) -> float:
    mean = float(shares @ placements)
    return max(0.0, float(shares @ placements**2) - mean**2)
