"""Two versions' answers to the same requests: agreement, score differences and McNemar's exact test on the
requests whose outcome is known."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from steward_monitor.pairing import Pair, compare


def test_agreement_and_score_difference_over_every_pair() -> None:
    pairs = [Pair("yes", "yes", 0.9, 0.8), Pair("yes", "no", 0.6, 0.4), Pair(1.0, "1", 0.7, None), Pair("no", "no")]
    found = compare(pairs)
    assert (found.pairs, found.agreement) == (4, 0.75)  # 1.0 and "1" are the same class.
    assert found.mean_score_difference == pytest.approx(((0.8 - 0.9) + (0.4 - 0.6)) / 2)
    assert (found.labelled, found.p_value, found.incumbent_accuracy) == (0, None, None)


def test_mcnemar_counts_only_the_requests_where_one_was_right() -> None:
    # 30 both right, 5 both wrong, 3 only the incumbent right, 12 only the challenger right.
    pairs = (
        [Pair("a", "a", label="a")] * 30
        + [Pair("a", "a", label="b")] * 5
        + [Pair("a", "b", label="a")] * 3
        + [Pair("b", "a", label="a")] * 12
        + [Pair("a", "b")] * 7  # No outcome yet: counted in agreement only.
    )
    found = compare(pairs)
    assert (found.pairs, found.labelled, found.only_incumbent, found.only_challenger) == (57, 50, 3, 12)
    assert found.incumbent_accuracy == pytest.approx(33 / 50)
    assert found.challenger_accuracy == pytest.approx(42 / 50)
    assert found.p_value == pytest.approx(binomtest(12, 15, 0.5).pvalue)
    assert found.agreement == pytest.approx(35 / 57)


def test_no_pairs_is_no_comparison() -> None:
    assert compare([]).agreement is None
    assert compare([Pair("a", "a", label="a")]).p_value == 1.0  # Never disagreed on a known outcome.
