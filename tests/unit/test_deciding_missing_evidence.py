"""The release decision when evidence is missing, short or late: a metrics outage pauses every stage and never promotes
nor rolls back, a release that outruns rollout.maxDuration is rolled back, a stage collects its minimum evidence
before it advances, and silence is not evidence."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steward_operator import specs
from steward_operator.deciding import Action, Policy, decide
from steward_operator.guardrails import Window
from tests.support.decisions import (
    BATCH,
    ONLINE,
    SHADOWED,
    alike,
    arm,
    evidence_of,
    held_out,
    live,
    rollout,
    timing,
    validate,
)

LIVE_STAGES = [("Shadowing", None, SHADOWED), ("Canary", 0, ONLINE), ("Canary", 2, ONLINE), ("Shadowing", None, BATCH)]


class TestOutage:
    @pytest.mark.parametrize(("phase", "step", "policy"), LIVE_STAGES)
    def test_pauses_every_live_stage(self, phase: specs.Phase, step: int | None, policy: Policy) -> None:
        verdict = live(None, phase, step, policy)
        assert verdict.decision == "pause"
        assert "metrics are unavailable" in verdict.rule
        assert verdict.evidence == ()

    def test_pauses_validation_when_the_held_out_results_cannot_be_read(self) -> None:
        verdict = decide(ONLINE, timing(), phase="Validating", window=None, holdouts=None)
        assert verdict.decision == "pause"
        assert "metrics are unavailable" in verdict.rule

    @pytest.mark.parametrize(("phase", "step", "policy"), [*LIVE_STAGES, ("Validating", None, ONLINE)])
    def test_wins_over_the_maximum_duration(self, phase: specs.Phase, step: int | None, policy: Policy) -> None:
        # An outage must never cause a rollback by itself, not even one that outlasts the release.
        overdue = timing(in_release=timedelta(hours=48))
        verdict = decide(policy, overdue, phase=phase, step=step, window=None, holdouts=None)
        assert verdict.decision == "pause"

    @given(
        in_stage=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
        extra=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
        step=st.integers(0, 2),
    )
    @settings(derandomize=True, max_examples=50)
    def test_never_promotes_nor_rolls_back(self, in_stage: timedelta, extra: timedelta, step: int) -> None:
        verdict = live(None, "Canary", step, when=timing(in_stage, in_stage + extra))
        assert verdict.decision == "pause"


class TestMaximumDuration:
    def test_rolls_back_a_release_that_ran_out_of_time(self) -> None:
        # Evidence that would otherwise promote does not count once the release has run too long.
        verdict = live(alike(500_000, 500_000), step=2, when=timing(in_release=timedelta(hours=25)))
        assert verdict.decision == "rollback"
        assert "rollout.maxDuration (24h)" in verdict.rule
        assert "25h" in verdict.rule
        assert "incumbent stays" in verdict.rule

    def test_keeps_the_stage_evidence_it_had(self) -> None:
        verdict = live(alike(20_000, 1_000), when=timing(in_release=timedelta(hours=25)))
        assert [evidence.metric for evidence in verdict.evidence] == ["errorRate", "slowRequests"]
        assert evidence_of(verdict, "errorRate").challenger_samples == 1_000

    def test_is_not_over_at_exactly_the_maximum(self) -> None:
        verdict = live(alike(500_000, 500_000), step=2, when=timing(in_release=timedelta(hours=24)))
        assert verdict.decision == "promote"

    def test_follows_the_spec(self) -> None:
        policy = Policy(rollout(maxDuration="2h"))
        verdict = live(alike(20_000, 1_000), policy=policy, when=timing(in_release=timedelta(hours=2, seconds=1)))
        assert verdict.decision == "rollback"
        assert "2h0m1s" not in verdict.rule
        assert "2h1s" in verdict.rule

    def test_ends_a_validation_that_never_got_its_results(self) -> None:
        verdict = validate(held_out(rocAuc=0.9), None, when=timing(in_release=timedelta(hours=25)))
        assert verdict.decision == "rollback"
        assert evidence_of(verdict, "rocAuc").verdict == "noData"

    def test_ends_a_last_step_that_never_proved_itself(self) -> None:
        too_few = alike(2_000, 1_000)
        assert live(too_few, step=2).decision == "continue"
        assert live(too_few, step=2, when=timing(in_release=timedelta(days=2))).decision == "rollback"


class TestMinimumEvidence:
    def test_shadow_waits_for_its_requests(self) -> None:
        verdict = live(alike(400, 400), "Shadowing", None, SHADOWED, timing(in_stage=timedelta(hours=1)))
        assert verdict.decision == "continue"
        assert verdict.rule == "collecting evidence in shadow: 400 of 1,000 challenger requests so far"

    def test_shadow_waits_for_its_duration(self) -> None:
        verdict = live(alike(5_000, 5_000), "Shadowing", None, SHADOWED, timing(in_stage=timedelta(minutes=10)))
        assert verdict.decision == "continue"
        assert verdict.rule == "collecting evidence in shadow: 10m of 15m so far"

    def test_says_everything_that_is_missing(self) -> None:
        verdict = live(alike(5_000, 100), when=timing(in_stage=timedelta(seconds=90)))
        assert verdict.rule.endswith("100 of 500 challenger requests and 1m30s of 5m so far")

    @pytest.mark.parametrize(
        ("policy", "requests", "in_stage", "decision"),
        [
            (Policy(rollout(shadow={"minRequests": 300, "minDuration": "1h"})), 300, timedelta(hours=1), "advance"),
            (Policy(rollout(shadow={"minRequests": 300, "minDuration": "1h"})), 299, timedelta(hours=1), "continue"),
            (Policy(rollout(shadow={"minRequests": 300, "minDuration": "1h"})), 300, timedelta(minutes=59), "continue"),
        ],
    )
    def test_shadow_minimum_follows_the_spec(
        self, policy: Policy, requests: int, in_stage: timedelta, decision: Action
    ) -> None:
        verdict = live(alike(requests, requests), "Shadowing", None, policy, timing(in_stage=in_stage))
        assert verdict.decision == decision

    @pytest.mark.parametrize(
        ("requests", "in_stage", "decision"),
        [
            (2_000, timedelta(minutes=10), "advance"),
            (1_999, timedelta(minutes=10), "continue"),
            (2_000, timedelta(minutes=9, seconds=59), "continue"),
        ],
    )
    def test_canary_minimum_follows_the_spec(self, requests: int, in_stage: timedelta, decision: Action) -> None:
        policy = Policy(rollout(canary={"minRequestsPerStep": 2_000, "minStepDuration": "10m"}))
        verdict = live(alike(20_000, requests), "Canary", 1, policy, timing(in_stage=in_stage))
        assert verdict.decision == decision

    def test_advancing_from_shadow_names_the_first_canary_step(self) -> None:
        verdict = live(alike(5_000, 5_000), "Shadowing", None, SHADOWED)
        assert verdict.decision == "advance"
        assert verdict.rule == (
            "shadow has its minimum evidence (5,000 challenger requests in 30m) and no guardrail failed:"
            " on to canary step 1 of 3 (5%)"
        )

    @pytest.mark.parametrize(("step", "following"), [(0, "canary step 2 of 3 (25%)"), (1, "canary step 3 of 3 (50%)")])
    def test_advancing_names_the_next_step(self, step: int, following: str) -> None:
        verdict = live(alike(20_000, 1_000), step=step)
        assert verdict.decision == "advance"
        assert verdict.rule.endswith(f"on to {following}")

    def test_batch_shadow_without_settings_uses_the_shadow_defaults(self) -> None:
        assert live(alike(999, 999), "Shadowing", None, BATCH).decision == "continue"
        short = live(alike(1_000, 1_000), "Shadowing", None, BATCH, timing(in_stage=timedelta(minutes=14)))
        assert short.decision == "continue"
        assert "of 15m" in short.rule

    def test_a_stage_started_in_the_future_has_taken_no_time(self) -> None:
        # Clocks of different machines disagree a little; that must not read as negative time.
        verdict = live(alike(5_000, 5_000), when=timing(in_stage=timedelta(seconds=-30)))
        assert verdict.rule.endswith("0s of 5m so far")


class TestNoTraffic:
    def test_a_silent_challenger_is_not_evidence(self) -> None:
        verdict = live(Window(arm(10_000), arm(0)), when=timing(in_stage=timedelta(minutes=20)))
        assert verdict.decision == "continue"
        assert verdict.rule.startswith("no traffic: the challenger answered no requests in 20m of canary step 1")
        assert "silence is not evidence" in verdict.rule

    def test_a_silent_incumbent_is_not_evidence(self) -> None:
        verdict = live(Window(arm(0), arm(1_000)), step=2)
        assert verdict.decision == "continue"
        assert "the incumbent answered no requests" in verdict.rule

    def test_silence_everywhere_is_said(self) -> None:
        verdict = live(Window(arm(0), arm(0)), "Shadowing", None, BATCH)
        assert "the challenger and the incumbent answered no requests" in verdict.rule

    def test_before_the_minimum_duration_it_is_just_collecting(self) -> None:
        verdict = live(Window(arm(10_000), arm(0)), when=timing(in_stage=timedelta(minutes=1)))
        assert verdict.decision == "continue"
        assert verdict.rule.startswith("collecting evidence")
