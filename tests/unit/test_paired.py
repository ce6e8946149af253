"""Anytime-valid tests on paired answers: each rejects a true null at most alpha of the time however often it is
looked at, finds a real difference in about as many pairs as the best single-look test, and refuses counts that are
no counts."""

from __future__ import annotations

import numpy as np
import pytest

from steward_operator import paired

ALPHA = 0.05


def _looks_until_fail(rng: np.random.Generator, rate: float, tolerance: float, every: int, most: int) -> int | None:
    """Pairs until the disagreement test fails, looking after every `every` pairs; None if it never did."""
    pairs = disagreements = 0
    while pairs < most:
        disagreements += int((rng.random(every) < rate).sum())
        pairs += every
        # What the disagreement guardrail fails on (its verdict is this test at the tolerance).
        if paired.rejects({1.0: disagreements, 0.0: pairs - disagreements}, tolerance, ALPHA, above=True):
            return pairs
    return None


def test_a_disagreement_at_the_tolerance_is_rarely_called_worse_however_often_it_is_looked_at() -> None:
    rng = np.random.default_rng(7)
    runs = 120
    false = sum(_looks_until_fail(rng, 0.02, 0.02, every=100, most=5_000) is not None for _ in range(runs))
    # Binomial(120, 0.05) exceeds 13 with probability under 1 %: a test that peeked its way past alpha would.
    assert false <= 13, f"{false} of {runs} runs failed an equal challenger"


def test_twice_the_tolerated_disagreement_fails_in_about_as_many_pairs_as_one_look_needs() -> None:
    rng = np.random.default_rng(11)
    found = [_looks_until_fail(rng, 0.04, 0.02, every=25, most=5_000) for _ in range(60)]
    assert None not in found
    # A one-sided binomial test of 2 % against 4 % at alpha 0.05 with power 0.8 needs about 390 pairs.
    assert float(np.median([n for n in found if n is not None])) < 1.5 * 390


def test_bounds_hold_the_truth_and_narrow_with_more_pairs() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for pairs in (200, 2_000, 20_000):
        disagreements = int((rng.random(pairs) < 0.1).sum())
        comparison = paired.disagreement(pairs, disagreements, tolerance=0.2, alpha=ALPHA)
        assert comparison.lower is not None
        assert comparison.upper is not None
        assert comparison.lower < 0.1 < comparison.upper
        assert comparison.verdict == "pass"
        widths.append(comparison.upper - comparison.lower)
    assert widths[0] > widths[1] > widths[2]


def test_an_accuracy_drop_shows_only_in_the_discordant_pairs() -> None:
    # 2,000 labelled pairs; the versions agree on 96 %; of the rest, 60 only the incumbent got right, 20 only the
    # challenger: a drop of 2 percentage points, which an unpaired test of two 90 % accuracies could not see yet.
    comparison = paired.accuracy_drop(2_000, 60, 20, tolerance=0.0, alpha=ALPHA)
    assert comparison.verdict == "fail"
    assert comparison.lower is not None
    assert comparison.upper is not None
    assert 0 < comparison.lower < 0.02 < comparison.upper
    assert (comparison.incumbent, comparison.challenger) == (0.03, 0.01)
    even = paired.accuracy_drop(2_000, 40, 40, tolerance=0.02, alpha=ALPHA)
    assert even.verdict == "pass"
    assert even.lower is not None
    assert even.upper is not None
    assert even.lower < 0 < even.upper


def test_an_equal_challenger_is_rarely_called_less_accurate() -> None:
    rng = np.random.default_rng(5)
    false = 0
    for _ in range(100):
        labelled = only_i = only_c = 0
        for _look in range(40):
            draws = rng.random(50)
            only_i += int((draws < 0.03).sum())
            only_c += int(((draws >= 0.03) & (draws < 0.06)).sum())
            labelled += 50
            # What pairedAccuracy fails on at tolerance 0: the mean score credibly below 1/2.
            scores = {0.0: only_i, 0.5: labelled - only_i - only_c, 1.0: only_c}
            if paired.rejects(scores, 0.5, ALPHA, above=False):
                false += 1
                break
    assert false <= 11, f"{false} of 100 equal challengers were called less accurate"


@pytest.mark.parametrize(("pairs", "disagreements"), [(400, 20), (400, 8), (400, 2), (3_000, 60), (3_000, 75)])
def test_the_verdict_is_the_one_sided_tests_and_agrees_with_the_bounds(pairs: int, disagreements: int) -> None:
    comparison = paired.disagreement(pairs, disagreements, tolerance=0.02, alpha=ALPHA)
    counts = {1.0: disagreements, 0.0: pairs - disagreements}
    worse, better = (paired.rejects(counts, 0.02, ALPHA, above=side) for side in (True, False))
    assert comparison.verdict == ("fail" if worse else "pass" if better else "inconclusive")
    assert comparison.lower is not None
    assert comparison.upper is not None
    # The bounds are the same tests inverted: below the tolerance only if a pass, above it only if a fail.
    assert (comparison.upper < 0.02) == better
    assert (comparison.lower > 0.02) == worse


def test_nothing_paired_is_no_data() -> None:
    assert paired.disagreement(0, 0, tolerance=0.02, alpha=ALPHA).verdict == "noData"
    assert paired.accuracy_drop(0, 0, 0, tolerance=0.0, alpha=ALPHA).verdict == "noData"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: paired.disagreement(10, 11, tolerance=0.1, alpha=ALPHA), "disagreements"),
        (lambda: paired.disagreement(10, -1, tolerance=0.1, alpha=ALPHA), "disagreements"),
        (lambda: paired.accuracy_drop(10, 6, 5, tolerance=0.0, alpha=ALPHA), "discordant"),
        (lambda: paired.accuracy_drop(10, -1, 0, tolerance=0.0, alpha=ALPHA), "discordant"),
        (lambda: paired.disagreement(10, 1, tolerance=0.1, alpha=0.7), "alpha"),
        (lambda: paired.mean_bounds({1.5: 3}, ALPHA), "values"),
    ],
)
def test_counts_that_are_no_counts_are_refused(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=message):
        call()
