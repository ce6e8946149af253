"""Anytime-valid tests on paired answers: the incumbent's and the challenger's answers to the same requests, as the
monitor pairs them in shadow. Pairing removes what the two versions share (the same request, the same outcome), so
a difference between them shows in far fewer requests than two independent samples need.

Each test bets against its null hypothesis: for a mean m of values in [0, 1] and a null m <= m0 (or m >= m0), the
wealth of betting a fixed fraction l on every value, prod(1 + l (value - m0)), is a nonnegative supermartingale
under the null; so is an average of such wealths over a grid of fractions. By Ville's inequality it ever reaches
1 / alpha with probability at most alpha, however often it is looked at (Waudby-Smith & Ramdas 2024, betting
confidence sequences). The wealth depends only on how many times each value was seen, so counts suffice. Bounds
are the null values no longer rejected, found by bisection."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from steward_operator.sequential import Comparison, Floats, Verdict

_FRACTIONS = np.geomspace(0.005, 0.95, 30)
"""The betting fractions mixed, as shares of the largest bet that cannot lose everything: small ones find small
effects after many values, large ones large effects soon. Kelly's fraction for a drop D among a share q of
discordant pairs is about D / q: from 0.005 the grid reaches a drop of half a percent of them, and spends no
wealth on smaller ones (bench/paired.py: a 2-point drop found in 875 labelled requests, 1.42x McNemar's single
look; from 0.002 it took 925)."""
_GRID = 400
"""Nulls tried at once before bisection narrows the bound between two of them."""
_BISECTIONS = 6


def rejects(counts: Mapping[float, int], null: float, alpha: float, *, above: bool) -> bool:
    """Whether the values seen, `counts` (value in [0, 1] -> how often), reject a mean at most `null` (`above`:
    the truth lies above it) or at least `null` (not `above`), at level `alpha`."""
    _check(counts, alpha)
    return bool(_rejected(counts, np.array([null]), alpha, above=above)[0])


def mean_bounds(counts: Mapping[float, int], alpha: float) -> tuple[float, float]:
    """Anytime-valid bounds of the mean of values in [0, 1] (each holds at every look with probability at least
    1 - alpha): the smallest and largest means no test rejects, to within 1e-5 and on the wide side. (0, 1)
    without values."""
    _check(counts, alpha)
    lower = _boundary(counts, alpha, above=True)
    upper = _boundary(counts, alpha, above=False)
    return lower, upper


def disagreement(pairs: int, disagreements: int, *, tolerance: float, alpha: float) -> Comparison:
    """How often the challenger answers differently from the incumbent on the same requests: `fail` once the share
    is credibly above `tolerance`, `pass` once credibly below it."""
    if not 0 <= disagreements <= pairs:
        raise ValueError(f"disagreements must lie between 0 and the pairs ({pairs}), got {disagreements}")
    if not pairs:
        return Comparison("disagreement", None, None, None, None, 0, 0, "noData")
    counts = {1.0: disagreements, 0.0: pairs - disagreements}
    lower, upper = mean_bounds(counts, alpha)
    verdict = _verdict(rejects(counts, tolerance, alpha, above=True), rejects(counts, tolerance, alpha, above=False))
    return Comparison("disagreement", 0.0, disagreements / pairs, lower, upper, pairs, pairs, verdict)


def accuracy_drop(
    labelled: int, only_incumbent: int, only_challenger: int, *, tolerance: float, alpha: float
) -> Comparison:
    """McNemar's question asked sequentially: on the labelled pairs, the incumbent's accuracy less the
    challenger's, D. Each pair scores (1 + challenger right - incumbent right) / 2, whose mean is (1 - D) / 2; only
    the discordant pairs (one right, the other wrong) move it. `fail` once D is credibly above `tolerance`, `pass`
    once credibly below it. `incumbent` and `challenger` are the shares of labelled pairs that only the one or
    only the other got right: D is their difference."""
    if min(labelled, only_incumbent, only_challenger) < 0 or only_incumbent + only_challenger > labelled:
        raise ValueError(
            f"discordant pairs ({only_incumbent} + {only_challenger}) cannot outnumber the labelled ({labelled})"
        )
    if not labelled:
        return Comparison("pairedAccuracy", None, None, None, None, 0, 0, "noData")
    counts = {0.0: only_incumbent, 0.5: labelled - only_incumbent - only_challenger, 1.0: only_challenger}
    low, high = mean_bounds(counts, alpha)
    # mean = (1 - D) / 2, so D = 1 - 2 mean: the mean's upper bound is D's lower bound, and D above the tolerance
    # is the mean below (1 - tolerance) / 2.
    lower, upper = 1 - 2 * high, 1 - 2 * low
    null = (1 - tolerance) / 2
    verdict = _verdict(rejects(counts, null, alpha, above=False), rejects(counts, null, alpha, above=True))
    return Comparison(
        "pairedAccuracy",
        only_incumbent / labelled,
        only_challenger / labelled,
        lower,
        upper,
        labelled,
        labelled,
        verdict,
    )


def _verdict(worse: bool, better: bool) -> Verdict:
    """From the two one-sided tests at the tolerance: credibly worse than it, or credibly better."""
    return "fail" if worse else "pass" if better else "inconclusive"


def _rejected(counts: Mapping[float, int], nulls: Floats, alpha: float, *, above: bool) -> NDArray[np.bool_]:
    """For each null mean, whether the mixed wealth of betting against it has reached 1 / alpha."""
    inside = (nulls > 0) & (nulls < 1)
    safe = np.where(inside, nulls, 0.5)
    # The largest bet that cannot lose everything on any value in [0, 1].
    largest = 1 / safe if above else -1 / (1 - safe)
    fractions = largest[:, None] * _FRACTIONS[None, :]
    log_wealth = np.zeros_like(fractions)
    for value, count in counts.items():
        if count:
            log_wealth += count * np.log1p(fractions * (value - safe[:, None]))
    peak = log_wealth.max(axis=1)
    mixed = peak + np.log(np.exp(log_wealth - peak[:, None]).mean(axis=1))
    found: NDArray[np.bool_] = inside & (mixed >= math.log(1 / alpha))
    # A mean at 0 (or 1) allows no value above (below) it: one such value rejects it outright; none beyond 1 (0).
    seen = [value for value, count in counts.items() if count > 0]
    edge = nulls <= 0 if above else nulls >= 1
    if any(value > 0 for value in seen) if above else any(value < 1 for value in seen):
        found |= edge
    return found


def _boundary(counts: Mapping[float, int], alpha: float, *, above: bool) -> float:
    """The lower (`above`) or upper bound: the edge of the nulls not rejected, first on a grid, then by bisection
    between the two grid points around it."""
    grid = np.linspace(0.0, 1.0, _GRID + 1)
    kept = np.flatnonzero(~_rejected(counts, grid, alpha, above=above))
    if not kept.size:
        return 1.0 if above else 0.0
    edge = int(kept[0] if above else kept[-1])
    if edge == (0 if above else _GRID):
        return float(grid[edge])
    # The grid point rejected and the one kept, either side of the bound, in ascending order.
    low, high = (grid[edge - 1], grid[edge]) if above else (grid[edge], grid[edge + 1])
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        if bool(_rejected(counts, np.array([middle]), alpha, above=above)[0]) == above:
            low = middle
        else:
            high = middle
    # The side no test rejects: a bound that errs, errs wide.
    return float(low if above else high)


def _check(counts: Mapping[float, int], alpha: float) -> None:
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
    for value, count in counts.items():
        if not 0 <= value <= 1:
            raise ValueError(f"values must lie in [0, 1], got {value}")
        if count < 0:
            raise ValueError(f"counts must not be negative, got {count} of {value}")
