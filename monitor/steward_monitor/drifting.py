"""Data and prediction drift, a pure computation: live counts over the training bins against the training shares,
per feature, with a floor that grows as the sample shrinks, Benjamini-Hochberg across features and k-of-m
persistence before an alert.

The population stability index (PSI, Jeffreys' divergence over the bins) of a window of n values drawn from the
training distribution is not 0: n x PSI is close to a chi-square with (bins - 1) degrees of freedom, so its
noise alone is about (bins - 1) / n. A fixed threshold (0.1 warn, 0.25 alert) therefore fires on small windows
for no reason and misses little on large ones. Here a feature reaches a level only when its PSI is at least the
level AND its chi-square p-value survives Benjamini-Hochberg at the false discovery rate across all features of
the window; and an alert is raised only when it held in k of the last m windows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import chi2

Level = Literal["ok", "warn", "alert"]
FALSE_DISCOVERY_RATE = 0.05
"""Expected share of false findings among the features flagged in a window (Benjamini-Hochberg)."""


@dataclass(frozen=True)
class Thresholds:
    """spec.monitoring.drift: PSI levels, and how many of the last windows must agree before an alert."""

    warn: float = 0.1
    alert: float = 0.25
    breaches: int = 2
    windows: int = 3
    seconds: float = 3600.0
    """Length of each window."""
    false_discovery_rate: float = FALSE_DISCOVERY_RATE


@dataclass(frozen=True)
class FeatureDrift:
    """One feature (or the predictions) in one window."""

    name: str
    psi: float
    p_value: float
    samples: int
    level: Level


def psi(expected: ArrayLike, observed: ArrayLike) -> float:
    """PSI of observed counts against expected shares over the same bins. A bin never seen in training keeps a
    tiny share, and observed counts get half a count each, so an empty bin on either side stays finite."""
    counts = np.asarray(observed, dtype=float)
    shares = np.asarray(expected, dtype=float)
    if counts.shape != shares.shape or counts.size < 2:
        raise ValueError(f"PSI needs the same two or more bins on both sides, got {shares.size} and {counts.size}")
    n = counts.sum()
    if n <= 0:
        return 0.0
    live = (counts + 0.5) / (n + 0.5 * counts.size)
    training = np.maximum(shares, 1e-6)
    training = training / training.sum()
    return float(np.sum((live - training) * np.log(live / training)))


def p_value(value: float, samples: int, bins: int) -> float:
    """How likely a PSI at least this large is for `samples` values drawn from the training distribution itself
    (n x PSI against a chi-square with bins - 1 degrees of freedom)."""
    if samples <= 0:
        return 1.0
    return float(chi2.sf(samples * value, bins - 1))


def benjamini_hochberg(p_values: Sequence[float], rate: float) -> list[bool]:
    """Which hypotheses are rejected at false discovery rate `rate`: the largest k with p_(k) <= k x rate / m,
    and every smaller p-value."""
    m = len(p_values)
    order = sorted(range(m), key=lambda index: p_values[index])
    cutoff = 0
    for rank, index in enumerate(order, start=1):
        if p_values[index] <= rank * rate / m:
            cutoff = rank
    rejected = [False] * m
    for index in order[:cutoff]:
        rejected[index] = True
    return rejected


def window(
    baselines: Mapping[str, Sequence[float]], counts: Mapping[str, ArrayLike], thresholds: Thresholds
) -> list[FeatureDrift]:
    """Every feature's drift in one window: `baselines` are the training shares per bin, `counts` the live counts
    over the same bins. A feature without live values is ok, with PSI 0."""
    names = sorted(baselines)
    found = []
    for name in names:
        observed = np.asarray(counts.get(name, [0] * len(baselines[name])), dtype=float)
        value = psi(baselines[name], observed)
        samples = int(observed.sum())
        found.append((name, value, p_value(value, samples, observed.size), samples))
    significant = benjamini_hochberg([p for _, _, p, _ in found], thresholds.false_discovery_rate)
    drifts = []
    for (name, value, p, samples), credible in zip(found, significant, strict=True):
        level: Level = "ok"
        if credible and value >= thresholds.alert:
            level = "alert"
        elif credible and value >= thresholds.warn:
            level = "warn"
        drifts.append(FeatureDrift(name, value, p, samples, level))
    return drifts


def persistent(levels: Sequence[Level], thresholds: Thresholds) -> bool:
    """Whether the alert level held in at least `breaches` of the last `windows` windows (oldest first)."""
    recent = list(levels)[-thresholds.windows :]
    return sum(level == "alert" for level in recent) >= thresholds.breaches


def noise_floor(samples: int, bins: int, rate: float = FALSE_DISCOVERY_RATE) -> float:
    """The PSI that `samples` values from the training distribution itself exceed with probability `rate`: what a
    fixed threshold must beat to mean anything at this sample size."""
    if samples <= 0:
        return math.inf
    return float(chi2.isf(rate, bins - 1)) / samples
