"""Champion/challenger on matured outcomes: the outcome guardrail rolls back a challenger credibly worse on the
outcomes that have arrived at any stage, waits only at the last stage for outcomes to mature, and keeps the
challenger at its share there until it is credibly no worse within its tolerance."""

from __future__ import annotations

from datetime import UTC, datetime

from steward_operator.deciding import Policy
from steward_operator.evidence.base import Losses, Outcomes
from steward_operator.guardrails import Window
from tests.support.decisions import alike, evidence_of, live, rollout

UNTIL = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
GATED = Policy(rollout(guardrails=[{"name": "errorRate"}, {"name": "outcome", "tolerance": 0.02}]))
LAST = 2  # canary steps 5, 25 and 50 %


def accuracy(incumbent: tuple[int, float] | None, challenger: tuple[int, float] | None, least: int = 200) -> Window:
    """Both versions serving alike, with these (labelled, accuracy) on their matured outcomes."""

    def wrong(found: tuple[int, float] | None) -> Losses | None:
        if found is None:
            return None
        count, right = found
        return Losses(count, 1 - right, right * (1 - right))

    base = alike(20_000, 20_000)
    outcomes = Outcomes("accuracy", wrong(incumbent), wrong(challenger), UNTIL, least)
    return Window(base.incumbent, base.challenger, outcomes=outcomes)


def test_a_challenger_credibly_less_accurate_is_rolled_back_at_any_stage() -> None:
    verdict = live(accuracy((3_000, 0.90), (3_000, 0.84)), step=0, policy=GATED)
    assert verdict.decision == "rollback"
    assert verdict.rule.startswith("guardrail outcome failed in canary step 1")
    assert "the challenger's accuracy is 84.00% against the incumbent's 90.00%, lower by at least" in verdict.rule
    assert evidence_of(verdict, "outcome").verdict == "fail"


def test_without_matured_outcomes_earlier_stages_go_on() -> None:
    assert live(accuracy(None, None), step=0, policy=GATED).decision == "advance"


def test_without_matured_outcomes_the_last_stage_waits_and_says_for_what() -> None:
    verdict = live(accuracy((5_000, 0.9), (120, 0.9)), step=LAST, policy=GATED)
    assert verdict.decision == "hold"
    assert (
        "guardrail outcome waits for matured outcomes: the challenger has 120 of the 200 it needs, among the"
        " predictions made until 2026-11-23 12:00 UTC"
    ) in verdict.rule


def test_unreadable_outcomes_hold_the_last_stage() -> None:
    base = alike(20_000, 20_000)
    verdict = live(Window(base.incumbent, base.challenger), step=LAST, policy=GATED)
    assert verdict.decision == "hold"
    assert "the monitor's outcomes could not be read" in verdict.rule


def test_the_last_stage_keeps_the_challenger_until_it_is_credibly_no_worse() -> None:
    verdict = live(accuracy((400, 0.9), (400, 0.9)), step=LAST, policy=GATED)
    assert verdict.decision == "continue"
    assert "not yet below the tolerance of 0.02" in verdict.rule
    assert "the challenger stays at its share in canary step 3 of 3 (50%) until it is credibly no worse" in verdict.rule


def test_an_equal_challenger_with_enough_outcomes_is_promoted() -> None:
    verdict = live(accuracy((20_000, 0.9), (20_000, 0.9)), step=LAST, policy=GATED)
    assert verdict.decision == "promote"
    assert evidence_of(verdict, "outcome").verdict == "pass"


def test_a_regressor_is_compared_on_its_mean_loss() -> None:
    base = alike(20_000, 20_000)
    outcomes = Outcomes("mae", Losses(4_000, 10.0, 36.0), Losses(4_000, 11.0, 36.0), UNTIL, 200)
    policy = Policy(rollout(guardrails=[{"name": "outcome", "tolerance": 0.5}]))
    verdict = live(Window(base.incumbent, base.challenger, outcomes=outcomes), step=0, policy=policy)
    assert verdict.decision == "rollback"
    assert "the challenger's mean absolute error is 11 against the incumbent's 10, higher by at least" in verdict.rule
