"""The release decision's promotion: at the last stage a challenger is promoted only once credibly not worse, a canary
step of 100 % is judged by the stage before it, and every verdict carries its evidence, in the order of the
guardrails, into the analysis recorded in status."""

from __future__ import annotations

import typing
from dataclasses import asdict
from datetime import timedelta

from steward_operator import specs
from steward_operator.deciding import DEFAULT_MARGIN, Policy, as_evidence
from steward_operator.guardrails import Window
from steward_operator.sequential import compare_rates, non_inferiority
from tests.support.decisions import (
    ACTIONS,
    BATCH,
    NOW,
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


class TestPromotion:
    def test_promotes_at_the_last_step_once_credibly_not_worse(self) -> None:
        verdict = live(alike(100_000, 100_000), step=2)
        assert verdict.decision == "promote"
        gate = evidence_of(verdict, "errorRateNonInferiority")
        assert gate.verdict == "pass"
        assert gate.upper is not None
        assert gate.upper < DEFAULT_MARGIN
        assert "below the margin of 0.50 percentage points (the default" in verdict.rule

    def test_keeps_collecting_until_credibly_not_worse(self) -> None:
        verdict = live(alike(2_000, 1_000), step=2)
        assert verdict.decision == "continue"
        assert "not yet credibly not worse" in verdict.rule
        assert "until rollout.maxDuration" in verdict.rule
        assert evidence_of(verdict, "errorRateNonInferiority").verdict == "inconclusive"

    def test_a_slightly_worse_challenger_is_not_promoted(self) -> None:
        # 1.25% against 1.0% is no credible breach of a 0 tolerance yet, nor credibly within the 0.5 point margin.
        window = Window(arm(100_000, errors=1_000), arm(20_000, errors=250))
        verdict = live(window, step=2)
        assert evidence_of(verdict, "errorRate").verdict != "fail"
        assert verdict.decision == "continue"

    def test_the_margin_is_the_error_rate_tolerance(self) -> None:
        window = alike(2_000, 1_000)
        policy = Policy(rollout(guardrails=[{"name": "errorRate", "tolerance": 0.02}]))
        verdict = live(window, step=2, policy=policy)
        assert verdict.decision == "promote"
        assert "margin of 2.00 percentage points (the errorRate guardrail's tolerance)" in verdict.rule
        expected = non_inferiority("errorRateNonInferiority", 20, 2_000, 10, 1_000, margin=0.02, alpha=0.05)
        assert evidence_of(verdict, "errorRateNonInferiority") == as_evidence(expected)

    def test_without_an_error_rate_guardrail_the_default_margin_applies(self) -> None:
        policy = Policy(rollout(guardrails=[{"name": "slowRequests", "tolerance": 0.05}]))
        verdict = live(alike(100_000, 100_000), step=2, policy=policy)
        assert verdict.decision == "promote"
        assert "(the default, as errorRate allows no increase)" in verdict.rule

    def test_the_gate_takes_the_full_alpha(self) -> None:
        verdict = live(alike(100_000, 100_000), step=2)
        expected = non_inferiority("errorRateNonInferiority", 1_000, 100_000, 1_000, 100_000, margin=0.005, alpha=0.05)
        assert evidence_of(verdict, "errorRateNonInferiority") == as_evidence(expected)

    def test_batch_promotes_from_shadow(self) -> None:
        verdict = live(alike(100_000, 100_000), "Shadowing", None, BATCH)
        assert verdict.decision == "promote"
        assert verdict.rule.startswith("shadow has its minimum evidence")

    def test_online_shadow_is_never_the_last_stage(self) -> None:
        assert live(alike(100_000, 100_000), "Shadowing", None, SHADOWED).decision == "advance"

    def test_a_step_past_the_end_is_the_last_step(self) -> None:
        # Steps shortened mid-release: the traffic split treats such a step as the last, and so does the gate.
        assert live(alike(100_000, 100_000), step=7).decision == "promote"

    def test_a_single_step_canary_promotes_from_it(self) -> None:
        policy = Policy(rollout(canary={"steps": [50]}))
        assert live(alike(100_000, 100_000), step=0, policy=policy).decision == "promote"

    def test_guardrails_still_roll_back_at_the_last_step(self) -> None:
        window = Window(arm(100_000, errors=1_000), arm(100_000, errors=3_000))
        assert live(window, step=2).decision == "rollback"


class TestFullCanaryStep:
    """A step of 100 % leaves the incumbent nothing to answer: the API refuses it, and one an older resource still
    holds is taken as the promotion, judged by the stage before it."""

    LEGACY = Policy(rollout(canary={"steps": [5, 25, 100]}))
    ONLY_FULL = Policy(rollout(canary={"steps": [100]}))

    def test_the_step_before_it_is_the_promotion_gate(self) -> None:
        verdict = live(alike(100_000, 100_000), step=1, policy=self.LEGACY)
        assert verdict.decision == "promote"
        assert evidence_of(verdict, "errorRateNonInferiority").verdict == "pass"

    def test_the_step_before_it_promotes_only_a_challenger_credibly_not_worse(self) -> None:
        assert live(alike(2_000, 1_000), step=1, policy=self.LEGACY).decision == "continue"

    def test_the_step_before_it_still_rolls_back_a_failing_challenger(self) -> None:
        window = Window(arm(10_000, errors=100), arm(1_000, errors=1_000))
        assert live(window, step=1, policy=self.LEGACY).decision == "rollback"

    def test_reached_after_a_judged_stage_it_completes_the_promotion(self) -> None:
        silent_incumbent = Window(arm(0), arm(1_000))
        verdict = live(silent_incumbent, step=2, policy=self.LEGACY)
        assert verdict.decision == "promote"
        assert "canary step 3 of 3 (100%)" in verdict.rule
        assert "canary step 2 of 3 (25%)" in verdict.rule

    def test_without_any_earlier_live_stage_a_failing_challenger_is_rolled_back_at_once(self) -> None:
        # The case a 100 % step used to leave open: no incumbent traffic, every comparison noData, until maxDuration.
        failing = Window(arm(0), arm(5_000, errors=5_000))
        verdict = live(failing, step=0, policy=self.ONLY_FULL, when=timing(in_stage=timedelta(minutes=1)))
        assert verdict.decision == "rollback"
        assert "cannot be judged" in verdict.rule
        assert "below 100%" in verdict.rule

    def test_a_metrics_outage_does_not_hold_a_challenger_at_100_percent_unjudged(self) -> None:
        assert live(None, step=0, policy=self.ONLY_FULL).decision == "rollback"

    def test_validation_keeps_a_challenger_no_stage_could_judge_from_traffic(self) -> None:
        verdict = validate(held_out(rocAuc=0.90), held_out(rocAuc=0.95), self.ONLY_FULL)
        assert verdict.decision == "rollback"
        assert "never receives traffic" in verdict.rule

    def test_a_shadow_stage_judges_it_and_promotes(self) -> None:
        policy = Policy(rollout(shadow={}, canary={"steps": [100]}))
        assert validate(held_out(rocAuc=0.9), held_out(rocAuc=0.9), policy).decision == "advance"
        assert live(alike(100_000, 100_000), "Shadowing", None, policy).decision == "promote"
        assert live(Window(arm(0), arm(1_000)), "Canary", 0, policy).decision == "promote"

    def test_the_default_steps_are_all_below_100(self) -> None:
        assert all(step < 100 for step in rollout().canary.steps)


class TestEvidence:
    def test_carries_the_counts_and_bounds_of_each_arm(self) -> None:
        window = Window(arm(20_000, errors=200, slow=1_000), arm(1_000, errors=15, slow=60))
        verdict = live(window)
        errors = evidence_of(verdict, "errorRate")
        assert (errors.incumbent_samples, errors.challenger_samples) == (20_000, 1_000)
        assert (errors.incumbent, errors.challenger) == (0.01, 0.015)
        assert errors.lower is not None
        assert errors.upper is not None
        assert errors.lower < 0.005 < errors.upper
        slow = evidence_of(verdict, "slowRequests")
        assert (slow.incumbent, slow.challenger) == (0.05, 0.06)

    def test_follows_the_order_of_the_guardrails(self) -> None:
        policy = Policy(
            rollout(guardrails=[{"name": "slowRequests"}, {"name": "predictionShift"}, {"name": "errorRate"}])
        )
        verdict = live(alike(20_000, 1_000), policy=policy)
        assert [evidence.metric for evidence in verdict.evidence] == ["slowRequests", "predictionShift", "errorRate"]

    def test_a_comparison_maps_field_by_field(self) -> None:
        comparison = compare_rates("errorRate", 100, 10_000, 30, 1_000, tolerance=0.01, alpha=0.025)
        assert as_evidence(comparison).model_dump() == asdict(comparison)

    def test_no_data_maps_to_no_data(self) -> None:
        comparison = compare_rates("errorRate", 0, 0, 0, 10)
        evidence = as_evidence(comparison)
        assert evidence.verdict == "noData"
        assert evidence.incumbent is None
        assert evidence.lower is None


class TestAnalysis:
    def test_records_the_verdict_with_its_time_and_phase(self) -> None:
        verdict = live(alike(20_000, 1_000))
        analysis = verdict.analysis(NOW, "Canary")
        assert analysis == specs.Analysis(
            time=NOW, phase="Canary", decision="advance", rule=verdict.rule, evidence=list(verdict.evidence)
        )

    def test_round_trips_through_status(self) -> None:
        analysis = live(alike(20_000, 1_000), step=2).analysis(NOW, "Canary")
        dumped = analysis.model_dump(mode="json", by_alias=True)
        assert dumped["evidence"][0]["incumbentSamples"] == 20_000
        assert specs.Analysis.model_validate(dumped) == analysis

    def test_decisions_are_those_status_accepts(self) -> None:
        annotation = specs.Analysis.model_fields["decision"].annotation
        assert set(typing.get_args(annotation)) == set(ACTIONS)
