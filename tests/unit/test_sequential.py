"""Anytime-valid comparisons: the bounds, the verdicts they lead to, the helpers around them, and seeded
simulations showing that looking after every batch keeps false alarms within alpha."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steward_operator import specs
from steward_operator.sequential import (
    RELEVANT_RATE_INCREASE,
    Comparison,
    ThresholdRule,
    compare_means,
    compare_rates,
    difference_bounds,
    first_alarm,
    mixing_variance,
    non_inferiority,
    radius,
    require_evidence,
    split_alpha,
)

BATCH = 50


def documented_variance(x_i: int, n_i: int, x_c: int, n_c: int) -> float:
    """The plug-in variance as the module documents it: smoothed per arm, never below the pooled spread."""
    pooled = (x_i + x_c + 1) / (n_i + n_c + 2)

    def spread(events: int, samples: int) -> float:
        rate = (events + 1) / (samples + 2)
        return max(rate * (1 - rate), pooled * (1 - pooled))

    return spread(x_i, n_i) / n_i + spread(x_c, n_c) / n_c


def mixture_ratio(distance: float, variance: float, mixing: float) -> float:
    """The half-normal mixture likelihood ratio at an estimate `distance` above theta, integrated numerically."""
    scale = math.sqrt(mixing)
    shifts = np.linspace(0.0, 12 * scale, 200_001)
    density = 2 * np.exp(-0.5 * (shifts / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
    likelihood = np.exp((shifts * distance - 0.5 * shifts**2) / variance)
    return float(np.trapezoid(likelihood * density, shifts))


def streams(rng: np.random.Generator, rate: float, count: int, looks: int) -> np.ndarray:
    return np.cumsum(rng.binomial(BATCH, rate, (count, looks)), axis=1)


class TestMixingVariance:
    @pytest.mark.parametrize(("effect", "alpha"), [(0.01, 0.05), (0.005, 0.01), (0.05, 0.2)])
    def test_is_tightest_where_the_effect_is_found(self, effect: float, alpha: float) -> None:
        # In standard errors the boundary is narrowest at one variance; there it should sit at the effect.
        variances = np.logspace(-10, 0, 20_001)
        radii = radius(variances, mixing_variance(effect, alpha), alpha)
        narrowest = int(np.argmin(radii / np.sqrt(variances)))
        # The tuning takes the one-sided boundary for the two-sided one at 2 alpha: close for the alphas in use.
        assert radii[narrowest] == pytest.approx(effect, rel=0.01 if alpha <= 0.1 else 0.03)

    def test_scales_with_the_square_of_the_effect(self) -> None:
        assert mixing_variance(0.02, 0.05) == pytest.approx(4 * mixing_variance(0.01, 0.05))

    @pytest.mark.parametrize(("effect", "alpha"), [(0.0, 0.05), (-0.01, 0.05), (0.01, 0.0), (0.01, 0.5)])
    def test_rejects_nonsense(self, effect: float, alpha: float) -> None:
        with pytest.raises(ValueError, match="must"):
            mixing_variance(effect, alpha)


class TestDifferenceBounds:
    def test_lower_bound_is_where_the_mixture_reaches_one_over_alpha(self) -> None:
        x_i, n_i, x_c, n_c = 30, 2000, 55, 2100
        lower, upper = difference_bounds(x_i, n_i, x_c, n_c, alpha=0.05)
        radius = (float(upper) - float(lower)) / 2
        variance = documented_variance(x_i, n_i, x_c, n_c)
        assert mixture_ratio(radius, variance, mixing_variance(RELEVANT_RATE_INCREASE, 0.05)) == pytest.approx(
            20, rel=1e-6
        )
        assert (float(lower) + float(upper)) / 2 == pytest.approx(55 / 2100 - 30 / 2000)

    def test_costs_a_little_width_over_a_single_look(self) -> None:
        # The price of looking at every batch: wider than a one-look 95% bound, but not by much where tuned.
        lower, _ = difference_bounds(23, 2319, 46, 2319)
        single_look = 1.6449 * math.sqrt(documented_variance(23, 2319, 46, 2319))
        assert 1.2 < (46 / 2319 - 23 / 2319 - float(lower)) / single_look < 1.8

    def test_work_elementwise_on_arrays(self) -> None:
        lower, upper = difference_bounds([0, 10], [100, 1000], [0, 30], [100, 1000])
        assert lower.shape == upper.shape == (2,)
        single, _ = difference_bounds(10, 1000, 30, 1000)
        assert lower[1] == pytest.approx(float(single))

    def test_no_observations_gives_nan(self) -> None:
        lower, upper = difference_bounds([0, 5], [0, 10], [0, 0], [10, 0])
        assert np.isnan(lower).all()
        assert np.isnan(upper).all()

    def test_all_errors_stay_within_the_possible(self) -> None:
        lower, upper = difference_bounds([0, 0], [20, 200], [20, 200], [20, 200])
        assert (lower >= -1).all()
        assert (upper <= 1).all()
        # Tuned for one percentage point, the mixture wants more than twenty requests even for this.
        assert lower.tolist()[0] < 0 < lower.tolist()[1]

    def test_huge_samples_narrow_to_the_estimate(self) -> None:
        n = 10**12
        lower, upper = difference_bounds(n // 100, n, n // 50, n)
        assert float(lower) == pytest.approx(0.01, abs=1e-5)
        assert float(upper) == pytest.approx(0.01, abs=1e-5)
        assert float(lower) < 0.01 < float(upper)

    @pytest.mark.parametrize(
        "counts",
        [(-1, 10, 0, 10), (0, -10, 0, 10), (11, 10, 0, 10), (0, 10, 11, 10), ([0, 5], [10, 4], 0, 10)],
    )
    def test_rejects_impossible_counts(self, counts: tuple[object, ...]) -> None:
        with pytest.raises(ValueError, match=r"negative|outnumber"):
            difference_bounds(*counts)  # type: ignore[arg-type]

    @given(
        n_i=st.integers(1, 10**6),
        n_c=st.integers(1, 10**6),
        share_i=st.floats(0, 1),
        share_c=st.floats(0, 1),
    )
    @settings(max_examples=60, deadline=None)
    def test_bounds_enclose_the_estimate(self, n_i: int, n_c: int, share_i: float, share_c: float) -> None:
        x_i, x_c = round(share_i * n_i), round(share_c * n_c)
        lower, upper = difference_bounds(x_i, n_i, x_c, n_c)
        assert -1 <= float(lower) <= x_c / n_c - x_i / n_i <= float(upper) <= 1

    @given(n=st.integers(1000, 10**6), share_i=st.floats(0.005, 1), share_c=st.floats(0.005, 0.5))
    @settings(max_examples=60, deadline=None)
    def test_more_challenger_errors_raise_the_lower_bound(self, n: int, share_i: float, share_c: float) -> None:
        x_i, x_c = round(share_i * n), round(share_c * n)
        before, _ = difference_bounds(x_i, n, x_c, n)
        after, _ = difference_bounds(x_i, n, x_c + 1, n)
        assert float(after) >= float(before)

    @given(
        n=st.integers(1, 10**5),
        share_i=st.floats(0, 1),
        share_c=st.floats(0, 1),
        tolerance=st.floats(0, 0.2),
    )
    @settings(max_examples=80, deadline=None)
    def test_more_challenger_errors_never_undo_a_failure(
        self, n: int, share_i: float, share_c: float, tolerance: float
    ) -> None:
        # Where a few requests stretch the bounds over most of [-1, 1] the plug-in variance lets the lower bound
        # wobble; the verdict, which is what acts, still only moves towards fail.
        x_i, x_c = round(share_i * n), min(n - 1, round(share_c * n))
        failed = compare_rates("e", x_i, n, x_c, n, tolerance=tolerance).credibly_worse
        assert not failed or compare_rates("e", x_i, n, x_c + 1, n, tolerance=tolerance).credibly_worse

    def test_more_requests_at_the_same_rates_narrow_the_bounds(self) -> None:
        widths = []
        for n in (100, 1_000, 10_000, 100_000, 1_000_000):
            lower, upper = difference_bounds(n // 100, n, n // 50, n)
            widths.append(float(upper) - float(lower))
        assert widths == sorted(widths, reverse=True)

    def test_smaller_alpha_widens_the_bounds(self) -> None:
        widths = [np.subtract(*difference_bounds(50, 5000, 80, 5000, alpha=a)[::-1]) for a in (0.2, 0.05, 0.01)]
        assert widths == sorted(widths)


class TestCompareRates:
    def test_credibly_worse_fails(self) -> None:
        result = compare_rates("errorRate", 100, 10_000, 500, 10_000)
        assert result.verdict == "fail"
        assert result.credibly_worse
        assert not result.credibly_not_worse
        assert result.lower is not None
        assert result.lower > 0

    def test_credibly_within_tolerance_passes(self) -> None:
        result = compare_rates("errorRate", 100, 10_000, 100, 10_000, tolerance=0.02)
        assert result.verdict == "pass"
        assert result.credibly_not_worse

    def test_too_little_to_tell_is_inconclusive(self) -> None:
        result = compare_rates("errorRate", 1, 100, 2, 100)
        assert result.verdict == "inconclusive"
        assert result.lower is not None
        assert result.upper is not None
        assert result.lower < 0.01 < result.upper

    def test_zero_errors_on_both_arms_is_inconclusive_not_certain(self) -> None:
        result = compare_rates("errorRate", 0, 500, 0, 500)
        assert result.verdict == "inconclusive"
        assert result.lower is not None
        assert result.upper is not None
        assert result.lower < 0 < result.upper

    def test_all_errors_against_none_fails(self) -> None:
        assert compare_rates("errorRate", 0, 200, 200, 200).verdict == "fail"

    @pytest.mark.parametrize(("incumbent", "challenger"), [((0, 0), (5, 100)), ((5, 100), (0, 0)), ((0, 0), (0, 0))])
    def test_an_arm_without_observations_is_no_data(
        self, incumbent: tuple[int, int], challenger: tuple[int, int]
    ) -> None:
        result = compare_rates("errorRate", *incumbent, *challenger)
        assert result.verdict == "noData"
        assert result.lower is None
        assert result.upper is None
        assert result.difference is None
        assert result.incumbent == (0.05 if incumbent[1] else None)
        assert result.challenger == (0.05 if challenger[1] else None)

    def test_no_data_still_refuses_impossible_counts(self) -> None:
        with pytest.raises(ValueError, match="outnumber"):
            compare_rates("errorRate", 3, 0, 0, 0)

    @pytest.mark.parametrize(
        "counts",
        [
            (math.nan, 100, 1, 100),
            (1, 100, math.nan, 100),
            (1, math.nan, 1, 100),
            (1, 100, 1, math.inf),
            (math.inf, math.inf, 1, 100),
            (math.nan, 0, 0, 0),
        ],
    )
    def test_counts_that_are_not_finite_numbers_are_refused(self, counts: tuple[float, ...]) -> None:
        # A NaN count used to pass every check (every comparison with NaN is false) and read as inconclusive.
        with pytest.raises(ValueError, match="finite"):
            compare_rates("e", *counts)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="finite"):
            non_inferiority("e", *counts, margin=0.01)  # type: ignore[arg-type]

    def test_reports_what_evidence_records(self) -> None:
        result = compare_rates("errorRate", 10, 1000, 30, 1500)
        assert result.incumbent == pytest.approx(0.01)
        assert result.challenger == pytest.approx(0.02)
        assert result.difference == pytest.approx(0.01)
        assert (result.incumbent_samples, result.challenger_samples) == (1000, 1500)
        evidence = specs.Evidence.model_validate(asdict(result))
        assert evidence.lower == result.lower
        assert evidence.verdict == result.verdict

    def test_minimum_evidence_holds_back_the_verdict(self) -> None:
        assert compare_rates("errorRate", 0, 200, 200, 200, minimum_samples=500).verdict == "inconclusive"
        assert compare_rates("errorRate", 0, 500, 200, 500, minimum_samples=500).verdict == "fail"

    @given(tolerances=st.lists(st.floats(-0.5, 0.5), min_size=2, max_size=8))
    @settings(max_examples=40, deadline=None)
    def test_raising_the_tolerance_only_moves_towards_pass(self, tolerances: list[float]) -> None:
        order = {"fail": 0, "inconclusive": 1, "pass": 2}
        verdicts = [order[compare_rates("e", 40, 2000, 70, 2000, tolerance=t).verdict] for t in sorted(tolerances)]
        assert verdicts == sorted(verdicts)


class TestNonInferiority:
    def test_passes_once_credibly_not_worse_than_the_margin(self) -> None:
        result = non_inferiority("misclassification", 1000, 10_000, 1010, 10_000, margin=0.03)
        assert result.credibly_not_worse
        assert result.upper is not None
        assert result.upper < 0.03

    def test_holds_back_while_the_upper_bound_reaches_the_margin(self) -> None:
        result = non_inferiority("misclassification", 100, 1000, 101, 1000, margin=0.01)
        assert result.verdict == "inconclusive"
        assert not result.credibly_not_worse

    def test_uses_the_same_confidence_sequence(self) -> None:
        gate = non_inferiority("m", 10, 1000, 12, 1000, margin=0.02)
        guard = compare_rates("m", 10, 1000, 12, 1000, tolerance=0.02)
        assert gate == guard


class TestAlphaAndEvidence:
    def test_splits_alpha_equally(self) -> None:
        shares = split_alpha(0.05, ["errorRate", "slowRequests", "predictionShift"])
        assert shares == pytest.approx(dict.fromkeys(("errorRate", "slowRequests", "predictionShift"), 0.05 / 3))

    def test_splits_alpha_by_weight(self) -> None:
        shares = split_alpha(0.05, {"errorRate": 2, "slowRequests": 1, "predictionShift": 1})
        assert shares == pytest.approx({"errorRate": 0.025, "slowRequests": 0.0125, "predictionShift": 0.0125})
        assert math.fsum(shares.values()) == pytest.approx(0.05)

    @pytest.mark.parametrize("guardrails", [[], {"errorRate": 0.0}, {"errorRate": -1.0}])
    def test_refuses_to_split_between_nothing(self, guardrails: list[str] | dict[str, float]) -> None:
        with pytest.raises(ValueError, match="guardrail"):
            split_alpha(0.05, guardrails)

    def test_minimum_evidence_leaves_other_verdicts_alone(self) -> None:
        for verdict in ("inconclusive", "noData"):
            comparison = Comparison("m", None, None, None, None, 0, 0, verdict)
            assert require_evidence(comparison, 100) == comparison

    def test_minimum_evidence_counts_the_smaller_arm(self) -> None:
        comparison = Comparison("m", 0.01, 0.05, 0.02, 0.06, 5000, 99, "fail")
        assert require_evidence(comparison, 100).verdict == "inconclusive"
        assert require_evidence(comparison, 99).verdict == "fail"
        with pytest.raises(ValueError, match="minimum_samples"):
            require_evidence(comparison, -1)


class TestThresholdCheck:
    def test_breaches_an_absolute_margin(self) -> None:
        rule = ThresholdRule(margin=0.005)
        assert rule.breached([0.01, 0.01], [0.016, 0.015]).tolist() == [True, False]

    def test_breaches_a_ratio(self) -> None:
        rule = ThresholdRule(margin=None, ratio=1.5)
        assert rule.breached([0.02, 0.02], [0.031, 0.03]).tolist() == [True, False]

    def test_rejects_a_rule_without_a_limit(self) -> None:
        with pytest.raises(ValueError, match="margin"):
            ThresholdRule(margin=None)
        with pytest.raises(ValueError, match="consecutive"):
            ThresholdRule(consecutive=0)

    def test_first_alarm_finds_the_first_run(self) -> None:
        alarms = [[0, 1, 1, 0, 1, 1, 1], [1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]]
        assert first_alarm(alarms).tolist() == [1, 0, -1]
        assert first_alarm(alarms, consecutive=2).tolist() == [2, -1, -1]
        assert first_alarm(alarms, consecutive=3).tolist() == [6, -1, -1]
        assert int(first_alarm([False, True])) == 1
        with pytest.raises(ValueError, match="consecutive"):
            first_alarm(alarms, consecutive=0)


class TestLookingAfterEveryBatch:
    """Seeded simulations, small enough for a unit test: 300 streams, a look after every 50 requests per arm."""

    def test_aa_false_rollbacks_stay_within_alpha(self) -> None:
        rng = np.random.default_rng(20240601)
        looks = 100
        requests = BATCH * np.arange(1, looks + 1)
        errors_i, errors_c = streams(rng, 0.01, 300, looks), streams(rng, 0.01, 300, looks)
        lower, _ = difference_bounds(errors_i, requests, errors_c, requests, alpha=0.05)
        assert np.mean(first_alarm(lower > 0) >= 0) <= 0.05

    def test_threshold_check_on_the_same_streams_does_not(self) -> None:
        rng = np.random.default_rng(20240601)
        looks = 100
        requests = BATCH * np.arange(1, looks + 1)
        errors_i, errors_c = streams(rng, 0.01, 300, looks), streams(rng, 0.01, 300, looks)
        breaches = ThresholdRule(margin=0.005).breached(errors_i / requests, errors_c / requests)
        assert np.mean(first_alarm(breaches) >= 0) > 0.3

    @pytest.mark.parametrize(("incumbent", "challenger"), [(0.05, 0.08), (0.02, 0.03), (0.2, 0.1)])
    def test_bounds_cover_the_true_difference_at_every_look(self, incumbent: float, challenger: float) -> None:
        rng = np.random.default_rng(7)
        looks = 100
        requests = BATCH * np.arange(1, looks + 1)
        errors_i, errors_c = streams(rng, incumbent, 300, looks), streams(rng, challenger, 300, looks)
        lower, upper = difference_bounds(errors_i, requests, errors_c, requests, alpha=0.05)
        truth = challenger - incumbent
        assert np.mean((lower > truth).any(axis=1)) <= 0.05
        assert np.mean((upper < truth).any(axis=1)) <= 0.05

    def test_catches_a_doubled_error_rate(self) -> None:
        rng = np.random.default_rng(3)
        looks = 100
        requests = BATCH * np.arange(1, looks + 1)
        errors_i, errors_c = streams(rng, 0.01, 300, looks), streams(rng, 0.02, 300, looks)
        lower, _ = difference_bounds(errors_i, requests, errors_c, requests, alpha=0.05)
        fired = first_alarm(lower > 0)
        assert np.mean(fired >= 0) > 0.8
        assert np.median(np.where(fired >= 0, fired + 1, looks + 1)) * BATCH < 1.5 * 2319


class TestCompareMeans:
    def test_a_credibly_higher_loss_fails(self) -> None:
        result = compare_means("outcome", (2_000, 10.0, 25.0), (2_000, 11.5, 25.0))
        assert result.verdict == "fail"
        assert (result.lower or 0) > 0
        assert result.difference == pytest.approx(1.5)

    def test_a_loss_within_the_tolerance_passes(self) -> None:
        result = compare_means("outcome", (20_000, 10.0, 25.0), (20_000, 10.05, 25.0), tolerance=0.5)
        assert result.verdict == "pass"
        assert (result.upper or 1) < 0.5

    def test_few_predictions_are_inconclusive_and_none_no_data(self) -> None:
        assert compare_means("outcome", (10, 10.0, 25.0), (10, 12.0, 25.0)).verdict == "inconclusive"
        assert compare_means("outcome", (0, 0.0, 0.0), (10, 12.0, 25.0)).verdict == "noData"

    def test_identical_losses_tell_nothing(self) -> None:
        result = compare_means("outcome", (500, 1.0, 0.0), (500, 1.0, 0.0))
        assert result.verdict == "inconclusive"

    @pytest.mark.parametrize("spoilt", [math.nan, math.inf, -1.0])
    def test_impossible_summaries_are_refused(self, spoilt: float) -> None:
        with pytest.raises(ValueError, match="finite and not negative"):
            compare_means("outcome", (100, 1.0, spoilt), (100, 1.0, 1.0))

    def test_false_alarms_stay_within_alpha_looking_after_every_batch(self) -> None:
        rng = np.random.default_rng(17)
        streams, looks, batch = 300, 60, 50
        alarms = 0
        for _ in range(streams):
            losses = rng.exponential(3.0, (2, looks * batch))
            for look in range(1, looks + 1):
                seen = losses[:, : look * batch]
                summaries = [(seen.shape[1], float(row.mean()), float(row.var())) for row in seen]
                if compare_means("outcome", summaries[0], summaries[1]).verdict == "fail":
                    alarms += 1
                    break
        assert alarms / streams <= 0.05
