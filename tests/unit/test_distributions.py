"""Whole-distribution comparisons: predictions over every bin at once and latency over the whole histogram, their
verdicts, what they refuse, and seeded simulations showing that looking after every batch keeps false alarms
within alpha."""

from __future__ import annotations

import math

import numpy as np
import pytest

from steward_operator.distributions import chi_square_boundary, compare_distributions, compare_latencies

BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, math.inf]


def histogram(per_bucket: list[int] | np.ndarray) -> dict[float, float]:
    """A cumulative latency histogram from the requests in each bucket."""
    return dict(zip(BUCKETS, np.cumsum(per_bucket).tolist(), strict=True))


class TestCompareDistributions:
    def test_measures_total_variation(self) -> None:
        result = compare_distributions("predictions", [50, 50], [30, 70])
        assert result.challenger == pytest.approx(0.2)
        assert result.incumbent == 0.0
        assert result.difference == pytest.approx(0.2)

    def test_a_clear_shift_fails(self) -> None:
        result = compare_distributions("predictions", [2500, 2500, 2500, 2500], [1000, 2000, 3000, 4000])
        assert result.verdict == "fail"
        assert result.lower is not None
        assert result.lower > 0.1

    def test_the_same_distribution_with_plenty_of_data_passes(self) -> None:
        result = compare_distributions("predictions", [25_000] * 4, [25_100, 24_900, 25_000, 25_000])
        assert result.verdict == "pass"
        assert result.upper is not None
        assert result.upper < 0.1

    def test_little_data_is_inconclusive(self) -> None:
        result = compare_distributions("predictions", [10, 10, 10], [12, 9, 9])
        assert result.verdict == "inconclusive"
        assert result.lower is not None
        assert result.upper is not None
        assert 0 <= result.lower <= (result.challenger or 0) <= result.upper <= 1

    def test_an_empty_arm_is_no_data(self) -> None:
        result = compare_distributions("predictions", [0, 0, 0], [5, 5, 5])
        assert result.verdict == "noData"
        assert result.incumbent_samples == 0
        assert result.challenger_samples == 15

    def test_minimum_evidence_holds_back_the_verdict(self) -> None:
        counts_i, counts_c = [2500] * 4, [1000, 2000, 3000, 4000]
        assert compare_distributions("p", counts_i, counts_c, minimum_samples=20_000).verdict == "inconclusive"

    @pytest.mark.parametrize(
        ("incumbent", "challenger", "tolerance"),
        [([1, 2], [1, 2, 3], 0.1), ([5], [5], 0.1), ([[1, 2]], [[1, 2]], 0.1), ([1, 2], [1, 2], 1.5)],
    )
    def test_rejects_malformed_input(self, incumbent: list[int], challenger: list[int], tolerance: float) -> None:
        with pytest.raises(ValueError, match=r"bins|tolerance"):
            compare_distributions("p", incumbent, challenger, tolerance=tolerance)

    @pytest.mark.parametrize("spoilt", [math.nan, math.inf, -math.inf])
    def test_rejects_counts_that_are_not_finite_numbers(self, spoilt: float) -> None:
        with pytest.raises(ValueError, match="finite"):
            compare_distributions("p", [10, spoilt], [10, 10])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="finite"):
            compare_distributions("p", [10, 10], [spoilt, 10])  # type: ignore[list-item]

    def test_false_alarms_stay_within_alpha_when_looking_after_every_batch(self) -> None:
        rng = np.random.default_rng(11)
        shares = [0.4, 0.3, 0.2, 0.1]
        count, looks = 60, 30
        alarms = 0
        for _ in range(count):
            counts_i = np.cumsum(rng.multinomial(100, shares, looks), axis=0)
            counts_c = np.cumsum(rng.multinomial(100, shares, looks), axis=0)
            verdicts = (
                compare_distributions("p", list(a), list(b), tolerance=0.0).verdict
                for a, b in zip(counts_i, counts_c, strict=True)
            )
            alarms += any(verdict == "fail" for verdict in verdicts)
        assert alarms / count <= 0.05

    def test_a_shift_spread_over_many_bins_is_seen_whole(self) -> None:
        # Two points moved in every one of ten bins: no single bin is credibly different yet, the whole is.
        incumbent, challenger = [400] * 10, [480, 320] * 5
        result = compare_distributions("p", incumbent, challenger, tolerance=0.0)
        assert result.verdict == "fail"
        assert 0 < (result.lower or 0) < (result.challenger or 0) == pytest.approx(0.1)

    def test_a_tolerance_above_the_shift_is_never_failed(self) -> None:
        result = compare_distributions("p", [10_000] * 10, [12_000, 8_000] * 5, tolerance=0.15)
        assert result.verdict == "pass"
        assert (result.upper or 1) < 0.15

    def test_the_boundary_grows_with_the_bins_and_shrinks_with_alpha(self) -> None:
        assert chi_square_boundary(0.01, 0.1, 9, 0.05) > chi_square_boundary(0.01, 0.1, 1, 0.05)
        assert chi_square_boundary(0.01, 0.1, 9, 0.05) < chi_square_boundary(0.01, 0.1, 9, 0.01)

    @pytest.mark.parametrize("shares", [[0.1] * 10, [0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05, 0.03, 0.02, 0.01]])
    def test_false_alarms_stay_within_alpha_over_ten_bins_looking_every_ten(self, shares: list[float]) -> None:
        rng = np.random.default_rng(5)
        alarms, count = 0, 100
        for _ in range(count):
            counts_i = np.cumsum(rng.multinomial(10, shares, 100), axis=0)
            counts_c = np.cumsum(rng.multinomial(10, shares, 100), axis=0)
            alarms += any(
                compare_distributions("p", list(a), list(b), tolerance=0.0).verdict == "fail"
                for a, b in zip(counts_i, counts_c, strict=True)
            )
        assert alarms / count <= 0.05

    def test_negative_counts_are_refused(self) -> None:
        with pytest.raises(ValueError, match="negative"):
            compare_distributions("p", [10, -1], [10, 10])


class TestCompareLatencies:
    def test_the_same_histogram_is_even(self) -> None:
        same = histogram([10, 20, 40, 20, 8, 2, 0])
        result = compare_latencies("latency", same, same)
        assert result.incumbent == 0.5
        assert result.challenger == pytest.approx(0.5)
        assert (result.lower or 0) < 0 < (result.upper or 0)

    def test_a_slower_challenger_fails(self) -> None:
        fast, slow = histogram([300, 500, 200, 0, 0, 0, 0]), histogram([0, 300, 500, 200, 0, 0, 0])
        result = compare_latencies("latency", fast, slow)
        assert result.verdict == "fail"
        assert (result.challenger or 0) > 0.8
        assert (result.lower or 0) > 0.2

    def test_a_faster_challenger_passes(self) -> None:
        slow, fast = histogram([0, 300, 500, 200, 0, 0, 0]), histogram([300, 500, 200, 0, 0, 0, 0])
        result = compare_latencies("latency", slow, fast)
        assert result.verdict == "pass"
        assert (result.upper or 0) < 0

    def test_requests_in_one_bucket_tie_whatever_the_versions(self) -> None:
        result = compare_latencies("latency", histogram([0, 0, 500, 0, 0, 0, 0]), histogram([0, 0, 5, 0, 0, 0, 0]))
        assert result.challenger == pytest.approx(0.5)
        assert result.verdict == "inconclusive"

    def test_a_tolerance_lets_a_slightly_slower_challenger_stay(self) -> None:
        incumbent, challenger = histogram([5_000, 5_000, 0, 0, 0, 0, 0]), histogram([4_600, 5_400, 0, 0, 0, 0, 0])
        assert compare_latencies("latency", incumbent, challenger).verdict == "fail"
        assert compare_latencies("latency", incumbent, challenger, tolerance=0.05).verdict == "pass"

    def test_an_arm_without_timed_requests_is_no_data(self) -> None:
        result = compare_latencies("latency", histogram([0] * 7), histogram([1, 2, 3, 0, 0, 0, 0]))
        assert result.verdict == "noData"
        assert (result.incumbent_samples, result.challenger_samples) == (0, 6)

    @pytest.mark.parametrize(
        ("incumbent", "challenger", "match"),
        [
            ({0.1: 5.0, math.inf: 10.0}, {0.2: 5.0, math.inf: 10.0}, "same boundaries"),
            ({0.1: 5.0, math.inf: 4.0}, {0.1: 5.0, math.inf: 10.0}, "cumulative"),
            ({0.1: math.nan, math.inf: 4.0}, {0.1: 5.0, math.inf: 10.0}, "finite"),
            ({0.1: -1.0, math.inf: 4.0}, {0.1: 5.0, math.inf: 10.0}, "non-negative"),
        ],
    )
    def test_malformed_histograms_are_refused(
        self, incumbent: dict[float, float], challenger: dict[float, float], match: str
    ) -> None:
        with pytest.raises(ValueError, match=match):
            compare_latencies("latency", incumbent, challenger)

    @pytest.mark.parametrize("canary", [1, 9])
    def test_false_alarms_stay_within_alpha_looking_every_ten(self, canary: int) -> None:
        rng = np.random.default_rng(9)
        shares = [0.05, 0.25, 0.4, 0.2, 0.08, 0.02, 0.0]
        alarms, count = 0, 100
        for _ in range(count):
            per_i = np.cumsum(rng.multinomial(10 * canary, shares, 60), axis=0)
            per_c = np.cumsum(rng.multinomial(10, shares, 60), axis=0)
            alarms += any(
                compare_latencies("latency", histogram(a), histogram(b)).verdict == "fail"
                for a, b in zip(per_i, per_c, strict=True)
            )
        assert alarms / count <= 0.05
