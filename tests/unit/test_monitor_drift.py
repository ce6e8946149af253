"""Drift on the training bins: PSI, its chi-square p-value, Benjamini-Hochberg across features and persistence,
with an A/A simulation of the false-alert rate (every window drawn from the training distribution itself) beside
the fixed-threshold check it replaces, and the power to find a real shift."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from steward_monitor.drifting import (
    Level,
    Thresholds,
    benjamini_hochberg,
    noise_floor,
    p_value,
    persistent,
    psi,
    window,
)
from steward_monitor.watching import DriftWatch

DECILES = [0.1] * 10


def test_psi_is_jeffreys_divergence_over_the_bins() -> None:
    expected = [0.5, 0.3, 0.2]
    observed = [300, 300, 400]
    live = (np.array(observed) + 0.5) / (1000 + 1.5)
    assert psi(expected, observed) == pytest.approx(float(np.sum((live - expected) * np.log(live / expected))))
    assert psi(expected, [500, 300, 200]) < 1e-5
    assert psi(expected, [0, 0, 0]) == 0.0
    assert np.isfinite(psi([0.5, 0.5, 0.0], [0, 10, 10]))  # A bin empty on either side stays finite.
    with pytest.raises(ValueError, match="same two or more bins"):
        psi([1.0], [3])


def test_p_values_are_calibrated_for_draws_from_training() -> None:
    rng = np.random.default_rng(11)
    values = [p_value(psi(DECILES, rng.multinomial(500, DECILES)), 500, 10) for _ in range(4_000)]
    assert np.mean(np.array(values) < 0.05) == pytest.approx(0.05, abs=0.012)


def test_benjamini_hochberg_rejects_the_step_up_set() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    # Sorted: 0.005 <= 1/5 x 0.05, 0.01 <= 2/5 x 0.05, 0.03 <= 3/5 x 0.05, 0.04 > 4/5 x 0.05... 0.04 <= 0.04.
    assert benjamini_hochberg(p, 0.05) == [True, True, True, True, False]
    assert benjamini_hochberg([0.5, 0.6], 0.05) == [False, False]
    assert benjamini_hochberg([], 0.05) == []


def test_the_noise_floor_falls_with_the_sample_size() -> None:
    assert noise_floor(50, 10) > 0.25 > noise_floor(500, 10) > noise_floor(5_000, 10)


def test_persistence_needs_k_of_the_last_m_windows() -> None:
    thresholds = Thresholds(breaches=2, windows=3)
    assert persistent(["alert", "ok", "alert"], thresholds)
    assert not persistent(["alert", "ok", "ok", "alert"], thresholds)
    assert not persistent(["alert"], thresholds)


def _aa(samples: int, windows: int, rng: np.random.Generator, features: int = 20) -> tuple[float, float, float]:
    """Share of windows with any feature alerted: fixed threshold alone, Steward's per-window level, and
    Steward's alert after 2-of-3 persistence."""
    thresholds = Thresholds()
    baselines = {f"f{index}": DECILES for index in range(features)}
    fixed = flagged = raised = 0
    history: dict[str, list[Level]] = {name: [] for name in baselines}
    for _ in range(windows):
        counts = {name: rng.multinomial(samples, DECILES) for name in baselines}
        drifts = window(baselines, counts, thresholds)
        fixed += any(drift.psi >= thresholds.alert for drift in drifts)
        flagged += any(drift.level == "alert" for drift in drifts)
        for drift in drifts:
            history[drift.name].append(drift.level)
        raised += any(persistent(levels, thresholds) for levels in history.values())
    return fixed / windows, flagged / windows, raised / windows


@pytest.mark.parametrize("samples", [50, 200, 2_000])
def test_aa_false_alerts_stay_within_the_false_discovery_rate(samples: int) -> None:
    """20 features, 10 training deciles each, 400 windows drawn from the training distribution. The fixed
    threshold (PSI >= 0.25) raises alarms on small windows nearly always; Steward's windows flag at most the
    false discovery rate, and persistence removes almost all of that."""
    fixed, flagged, raised = _aa(samples, 400, np.random.default_rng(samples))
    assert flagged <= 0.05 + 0.03  # FDR 0.05 bounds the family-wise rate under the global null; 400 windows' noise
    assert raised <= 0.01
    if samples == 50:
        assert fixed > 0.9


def test_a_real_shift_is_found_and_persists() -> None:
    rng = np.random.default_rng(5)
    baselines = {"age": DECILES, "income": DECILES}
    shifted = np.array([0.02, 0.03, 0.05, 0.07, 0.08, 0.1, 0.12, 0.15, 0.18, 0.2])  # Mass moved to high deciles.
    levels = []
    for _ in range(20):
        counts = {"age": rng.multinomial(500, shifted), "income": rng.multinomial(500, DECILES)}
        drifts = {drift.name: drift for drift in window(baselines, counts, Thresholds())}
        assert drifts["income"].level == "ok"
        levels.append(drifts["age"].level)
    assert levels.count("alert") == 20
    assert persistent(levels, Thresholds())


class _Answered(DriftWatch):
    """A drift watch over fixed series, as Prometheus would answer its queries: two versions with one feature,
    each asking for its own window."""

    def __init__(self, windows: dict[str, float]) -> None:
        super().__init__("http://prometheus.invalid", Thresholds(seconds=3600))
        self.windows = windows
        self.spans: list[str] = []

    async def _vector(self, query: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        feature = ("x",) if "feature" in labels else ()
        if "increase(" in query:
            self.spans.append(query.split("[")[1].split("]", maxsplit=1)[0])
            return {("ml", model, "v1", *feature, share): 50.0 for model in self.windows for share in "01"}
        if "threshold" in labels:
            return {("ml", model, "v1", "seconds"): seconds for model, seconds in self.windows.items()}
        return {("ml", model, "v1", *feature, share): 0.5 for model in self.windows for share in "01"}


def test_each_version_is_judged_when_its_own_window_ends() -> None:
    watch = _Answered({"fast": 4, "hourly": 3600})
    assert watch.tick() == 1.0  # The first step comes at once, to learn the versions and their windows.
    assert asyncio.run(watch.step(now=0.0)) == {}  # Their first windows begin.
    assert watch.tick() == 4.0
    assert asyncio.run(watch.step(now=2.0)) == {}
    judged = asyncio.run(watch.step(now=4.0))
    assert set(judged) == {("ml", "fast", "v1")}
    assert watch.spans == ["4s", "4s"]  # Its counts over its own window: the features', then the predictions'.
    later = asyncio.run(watch.step(now=8.0))
    assert later[("ml", "fast", "v1")].time > judged[("ml", "fast", "v1")].time
    assert ("ml", "hourly", "v1") not in asyncio.run(watch.step(now=3000.0))
    assert ("ml", "hourly", "v1") in asyncio.run(watch.step(now=3600.0))
    assert "3600s" in watch.spans


def test_steps_come_at_least_once_a_minute_whatever_the_windows() -> None:
    watch = _Answered({"daily": 86_400})
    asyncio.run(watch.step(now=0.0))
    assert watch.tick() == 60.0
