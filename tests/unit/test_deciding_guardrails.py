"""The release decision's guardrails: a credibly worse challenger is rolled back as soon as that is clear, with the rule
and alpha each verdict names; errors the gateway answered count as the challenger's; a guardrail without data holds
the stage and says why; the default slowRequests guardrail catches a challenger 30 % slower, and the latency guardrail
catches it on far fewer requests."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta

import pytest

from steward_operator import specs
from steward_operator.deciding import Policy, Verdict, as_evidence
from steward_operator.distributions import compare_distributions
from steward_operator.evidence.base import ArmCounts, PairCounts
from steward_operator.guardrails import Window, slow_threshold
from steward_operator.sequential import compare_rates
from tests.support.decisions import SHADOWED, alike, arm, evidence_of, live, lognormal_latency, rollout, timing


class TestGuardrails:
    def test_a_credibly_worse_error_rate_rolls_back_before_the_minimum_evidence(self) -> None:
        # 200 of 500 requests and 1 of 5 minutes: far short of the step's minimum, and still decisive.
        window = Window(arm(10_000, errors=100), arm(200, errors=100))
        verdict = live(window, when=timing(in_stage=timedelta(minutes=1)))
        assert verdict.decision == "rollback"
        assert verdict.rule.startswith("guardrail errorRate failed in canary step 1 of 3 (5%)")
        assert "challenger 50.00% against incumbent 1.00%" in verdict.rule
        assert "200 and 10,000 requests" in verdict.rule
        assert "at alpha 0.025" in verdict.rule

    def test_fails_in_shadow_too(self) -> None:
        window = Window(arm(10_000, errors=100), arm(10_000, errors=1_000))
        assert live(window, "Shadowing", None, SHADOWED).decision == "rollback"

    def test_slow_requests_roll_back(self) -> None:
        window = Window(arm(10_000, slow=500), arm(10_000, slow=2_000))
        verdict = live(window)
        assert verdict.decision == "rollback"
        assert verdict.rule.startswith("guardrail slowRequests failed")
        assert "timed requests" in verdict.rule
        assert "tolerance of 0.00 percentage points" in verdict.rule

    def test_a_prediction_shift_rolls_back(self) -> None:
        policy = Policy(rollout(guardrails=[{"name": "predictionShift", "tolerance": 0.1}]))
        window = Window(
            arm(5_000, predictions={"0": 4_000, "1": 1_000}), arm(5_000, predictions={"0": 1_000, "1": 4_000})
        )
        verdict = live(window, policy=policy)
        assert verdict.decision == "rollback"
        assert "0.6 apart from the incumbent's in total variation" in verdict.rule
        assert "at alpha 0.05" in verdict.rule

    def test_the_same_predictions_do_not_shift(self) -> None:
        policy = Policy(rollout(guardrails=[{"name": "predictionShift", "tolerance": 0.1}]))
        same = {"0": 4_000, "1": 1_000}
        verdict = live(Window(arm(5_000, predictions=same), arm(5_000, predictions=same)), policy=policy)
        assert verdict.decision == "advance"
        assert evidence_of(verdict, "predictionShift").verdict == "pass"

    def test_prediction_bins_are_the_union_of_both_arms(self) -> None:
        policy = Policy(rollout(guardrails=[{"name": "predictionShift", "tolerance": 0.1}]))
        window = Window(arm(1_000, predictions={"a": 600, "b": 400}), arm(1_000, predictions={"b": 300, "c": 700}))
        expected = compare_distributions("predictionShift", [600, 400, 0], [0, 300, 700], tolerance=0.1, alpha=0.05)
        assert evidence_of(live(window, policy=policy), "predictionShift") == as_evidence(expected)

    @pytest.mark.parametrize(
        ("incumbent", "challenger", "verdict"),
        [({"yes": 1_000}, {"yes": 1_000}, "inconclusive"), ({}, {}, "noData"), ({"yes": 10}, {}, "noData")],
    )
    def test_one_bin_or_none_is_still_compared(
        self, incumbent: dict[str, int], challenger: dict[str, int], verdict: str
    ) -> None:
        policy = Policy(rollout(guardrails=[{"name": "predictionShift"}]))
        window = Window(arm(1_000, predictions=incumbent), arm(1_000, predictions=challenger))
        assert evidence_of(live(window, policy=policy), "predictionShift").verdict == verdict

    def test_the_tolerance_allows_that_much_worse(self) -> None:
        window = Window(arm(10_000, errors=100), arm(200, errors=100))
        strict = Policy(rollout(guardrails=[{"name": "errorRate"}]))
        lenient = Policy(rollout(guardrails=[{"name": "errorRate", "tolerance": 0.5}]))
        assert live(window, policy=strict).decision == "rollback"
        assert live(window, policy=lenient).decision == "continue"

    def test_names_every_guardrail_that_failed(self) -> None:
        window = Window(arm(10_000, errors=100, slow=500), arm(10_000, errors=1_000, slow=5_000))
        verdict = live(window)
        assert verdict.rule.startswith("guardrail errorRate failed")
        assert "slowRequests failed too" in verdict.rule

    @pytest.mark.parametrize(
        ("guardrails", "alpha"),
        [
            ([{"name": "errorRate"}], 0.05),
            ([{"name": "errorRate"}, {"name": "slowRequests"}], 0.025),
            ([{"name": "errorRate"}, {"name": "slowRequests"}, {"name": "predictionShift"}], 0.05 / 3),
        ],
    )
    def test_split_alpha_between_them(self, guardrails: list[dict[str, object]], alpha: float) -> None:
        policy = Policy(rollout(guardrails=guardrails))
        window = Window(arm(20_000, errors=200), arm(1_000, errors=15))
        expected = compare_rates("errorRate", 200, 20_000, 15, 1_000, alpha=alpha)
        assert evidence_of(live(window, policy=policy), "errorRate") == as_evidence(expected)

    def test_confidence_sets_alpha(self) -> None:
        policy = Policy(rollout(confidence=0.99, guardrails=[{"name": "errorRate"}]))
        window = Window(arm(20_000, errors=200), arm(1_000, errors=15))
        expected = compare_rates("errorRate", 200, 20_000, 15, 1_000, alpha=0.01)
        found = evidence_of(live(window, policy=policy), "errorRate")
        assert found.lower == pytest.approx(expected.lower)
        assert found.upper == pytest.approx(expected.upper)

    def test_the_lowest_confidence_still_decides(self) -> None:
        policy = Policy(rollout(confidence=0.5, guardrails=[{"name": "errorRate"}]))
        assert live(alike(500_000, 500_000), step=2, policy=policy).decision == "promote"

    def test_slow_requests_without_a_threshold_are_no_data_and_hold(self) -> None:
        window = Window(arm(10_000, slow=0, slow_after=None), arm(10_000, slow=0, slow_after=None))
        verdict = live(window)
        slow = evidence_of(verdict, "slowRequests")
        assert slow.verdict == "noData"
        assert (slow.incumbent_samples, slow.challenger_samples) == (10_000, 10_000)
        assert verdict.decision == "hold"

    def test_without_a_threshold_slow_means_slower_than_the_incumbents_p95(self) -> None:
        def timed(under_10ms: int, under_25ms: int) -> ArmCounts:
            latency = {0.005: 0, 0.01: under_10ms, 0.025: under_25ms, math.inf: 10_000}
            return ArmCounts(requests=10_000, timed=10_000, latency=latency)

        assert slow_threshold(timed(9_500, 9_990)) == 0.01
        assert slow_threshold(timed(9_499, 9_990)) == 0.025
        assert slow_threshold(timed(9_000, 9_400)) is None  # Only +Inf holds 95 %: no threshold to apply.
        assert slow_threshold(ArmCounts()) is None

        slower = live(Window(timed(9_500, 9_990), timed(8_000, 9_000)))
        slow = evidence_of(slower, "slowRequests")
        assert (slow.incumbent, slow.challenger) == (0.05, 0.2)
        assert slower.decision == "rollback"
        assert slower.rule.startswith("guardrail slowRequests failed")
        assert live(Window(timed(9_500, 9_990), timed(9_480, 9_990))).decision == "advance"

        unbucketed = live(Window(timed(9_500, 9_990), ArmCounts(requests=10_000, timed=10_000)))
        assert evidence_of(unbucketed, "slowRequests").verdict == "noData"

    def test_without_guardrails_only_the_stage_minimum_counts(self) -> None:
        policy = Policy(rollout(guardrails=[]))
        window = Window(arm(10_000, errors=100), arm(1_000, errors=900))
        verdict = live(window, policy=policy)
        assert verdict.decision == "advance"
        assert verdict.evidence == ()


class TestGatewayErrors:
    """errorRate and the promotion gate count what clients were answered: the gateway also answers for pods that died
    mid-request or never answered, which no predictor counts."""

    def test_errors_only_the_gateway_saw_roll_back(self) -> None:
        # The challenger's pods keep dying: its predictors answered 200 requests without an error, while the gateway
        # answered 100 more of its share with 502s.
        dying = replace(arm(200), gateway_requests=300, gateway_errors=100)
        window = Window(replace(arm(10_000, errors=100), gateway_requests=10_000, gateway_errors=100), dying)
        verdict = live(window, when=timing(in_stage=timedelta(minutes=1)))
        assert verdict.decision == "rollback"
        assert "challenger 33.33% against incumbent 1.00% over 300 and 10,000 requests" in verdict.rule
        assert "(the gateway answered 100 of its requests with a 5xx, its predictors 0)" in verdict.rule
        unseen = live(Window(arm(10_000, errors=100), arm(200)), when=timing(in_stage=timedelta(minutes=1)))
        assert unseen.decision != "rollback"

    def test_a_gateway_that_saw_what_the_predictors_saw_changes_nothing(self) -> None:
        window = alike(100_000, 100_000)
        incumbent, challenger = (
            replace(counts, gateway_requests=counts.requests, gateway_errors=counts.errors)
            for counts in (window.incumbent, window.challenger)
        )
        assert live(Window(incumbent, challenger), step=2) == live(window, step=2)

    def test_a_challenger_only_the_gateway_answered_for_is_not_silent(self) -> None:
        # No pod answered at all: the predictors counted nothing, the gateway a 503 for every request.
        gone = replace(arm(0), gateway_requests=500, gateway_errors=500)
        verdict = live(Window(arm(10_000, errors=100), gone), when=timing(in_stage=timedelta(minutes=1)))
        assert verdict.decision == "rollback"
        assert verdict.rule.startswith("guardrail errorRate failed")

    def test_the_promotion_gate_counts_the_gateway_s_errors(self) -> None:
        window = alike(20_000, 20_000)
        assert live(window, step=2).decision == "promote"
        # 40 more 5xx from the gateway than from the predictors: neither credibly worse nor credibly not worse yet.
        challenger = replace(window.challenger, gateway_requests=20_000, gateway_errors=200 + 40)
        verdict = live(Window(window.incumbent, challenger), step=2)
        assert verdict.decision == "continue"
        assert evidence_of(verdict, "errorRateNonInferiority").challenger == pytest.approx(0.012)

    def test_gateway_errors_outnumbering_its_requests_are_unusable(self) -> None:
        challenger = replace(arm(1_000), gateway_requests=10, gateway_errors=20)
        verdict = live(Window(arm(1_000), challenger))
        assert verdict.decision == "pause"
        assert "the challenger's gateway's errors (20) outnumber its requests (10)" in verdict.rule


class TestGuardrailWithoutData:
    """No data is not a pass: a guardrail that cannot compare the versions holds the stage, and says why."""

    def test_a_challenger_without_a_latency_histogram_holds(self) -> None:
        incumbent = lognormal_latency(20_000, p95=0.04)
        window = Window(incumbent, ArmCounts(requests=1_000, timed=0))
        verdict = live(window)
        assert verdict.decision == "hold"
        assert "guardrail slowRequests waits for latency" in verdict.rule
        assert "the challenger" in verdict.rule
        assert evidence_of(verdict, "slowRequests").verdict == "noData"

    def test_a_challenger_without_predictions_holds(self) -> None:
        policy = Policy(rollout(guardrails=[{"name": "predictionShift", "tolerance": 0.1}]))
        window = Window(arm(5_000, predictions={"0": 4_000, "1": 1_000}), arm(5_000))
        verdict = live(window, policy=policy)
        assert verdict.decision == "hold"
        assert "guardrail predictionShift waits for predictions: the challenger reported none" in verdict.rule

    def test_no_data_at_the_last_step_never_promotes(self) -> None:
        window = Window(arm(500_000, errors=5_000, slow_after=None), arm(500_000, errors=5_000, slow_after=None))
        verdict = live(window, step=2)
        assert verdict.decision == "hold"
        assert "neither version's requests carry a latency histogram" in verdict.rule
        incumbent_only = Window(arm(500_000, errors=5_000, slow_after=None), lognormal_latency(500_000, p95=0.04))
        assert "the incumbent's requests carry no latency histogram" in live(incumbent_only, step=2).rule

    def test_an_incumbent_p95_beyond_the_last_bucket_is_named(self) -> None:
        slow = ArmCounts(requests=10_000, timed=10_000, latency={1.0: 100, 10.0: 9_000, math.inf: 10_000})
        verdict = live(Window(slow, slow))
        assert verdict.decision == "hold"
        assert "above its largest finite latency bucket" in verdict.rule

    def test_a_challenger_without_the_incumbents_bucket_is_named(self) -> None:
        incumbent = lognormal_latency(20_000, p95=0.04)
        other = ArmCounts(requests=1_000, timed=1_000, latency={0.03: 900, math.inf: 1_000})
        verdict = live(Window(incumbent, other))
        assert verdict.decision == "hold"
        assert "no latency bucket at the incumbent's p95 (0.05 s)" in verdict.rule

    def test_every_waiting_guardrail_is_named(self) -> None:
        policy = Policy(rollout(guardrails=[{"name": "slowRequests"}, {"name": "predictionShift"}]))
        window = Window(arm(5_000, slow_after=None), arm(5_000, slow_after=None))
        rule = live(window, policy=policy).rule
        assert "guardrail slowRequests waits for latency" in rule
        assert "guardrail predictionShift waits for predictions" in rule

    def test_before_the_minimum_evidence_it_is_just_collecting(self) -> None:
        window = Window(lognormal_latency(20_000, p95=0.04), ArmCounts(requests=100, timed=0))
        assert live(window).rule.startswith("collecting evidence")


class TestSlowRequestsDefault:
    """The default slowRequests guardrail catches a challenger 30 % slower, in the predictor's own buckets."""

    def test_a_30_percent_slower_challenger_is_rolled_back(self) -> None:
        # p95 40 ms: the incumbent's p95 bucket is 50 ms, above which 1.8 % of its requests finish; 30 % slower, the
        # challenger has 5.9 % there. An absolute tolerance of 0.05 lets that pass for ever.
        window = Window(lognormal_latency(20_000, p95=0.04), lognormal_latency(20_000, p95=0.04, slower=1.3))
        verdict = live(window)
        assert verdict.decision == "rollback"
        assert verdict.rule.startswith("guardrail slowRequests failed")

    def test_an_equally_fast_challenger_goes_on(self) -> None:
        window = Window(lognormal_latency(20_000, p95=0.04), lognormal_latency(20_000, p95=0.04))
        assert live(window).decision == "advance"

    def test_the_default_is_what_a_bare_guardrail_gets(self) -> None:
        (default,) = [guardrail for guardrail in rollout().guardrails if guardrail.name == "slowRequests"]
        assert default == specs.Guardrail(name="slowRequests")


class TestPairedGuardrails:
    """disagreement and pairedAccuracy judge both versions' answers to the same requests: in shadow only."""

    POLICY = Policy(
        rollout(
            shadow={},
            guardrails=[
                {"name": "errorRate"},
                {"name": "disagreement", "tolerance": 0.05},
                {"name": "pairedAccuracy", "tolerance": 0.0},
            ],
        )
    )

    def _shadow(self, pairs: PairCounts | None) -> Verdict:
        return live(Window(arm(5_000), arm(5_000), pairs), "Shadowing", None, self.POLICY)

    def test_a_challenger_that_answers_differently_too_often_is_rolled_back(self) -> None:
        verdict = self._shadow(PairCounts(pairs=2_000, disagreements=300, labelled=0))
        assert verdict.decision == "rollback"
        assert verdict.rule.startswith("guardrail disagreement failed in shadow: the challenger answered 15.00% of")
        assert "2,000 paired requests differently" in verdict.rule
        assert evidence_of(verdict, "disagreement").verdict == "fail"

    def test_a_less_accurate_challenger_is_rolled_back_on_the_discordant_pairs(self) -> None:
        pairs = PairCounts(pairs=3_000, disagreements=80, labelled=2_000, only_incumbent=60, only_challenger=20)
        verdict = self._shadow(pairs)
        assert verdict.decision == "rollback"
        assert verdict.rule.startswith("guardrail pairedAccuracy failed in shadow: on 2,000 paired requests")
        assert "only the incumbent was right on 3.00% and only the challenger on 1.00%" in verdict.rule
        # The same 2 points, as two independent accuracies of 90 % and 88 % over 2,000 each, are not yet a fail.
        unpaired = compare_rates("errors", 200, 2_000, 240, 2_000, alpha=0.05 / 3)
        assert unpaired.verdict == "inconclusive"

    def test_no_outcomes_yet_holds_the_shadow_and_says_what_it_waits_for(self) -> None:
        verdict = self._shadow(PairCounts(pairs=2_000, disagreements=10))
        assert verdict.decision == "hold"
        assert "guardrail pairedAccuracy waits for labelled pairs: no outcome has arrived for any of the 2,000" in (
            verdict.rule
        )

    def test_unreadable_pairs_hold_the_shadow(self) -> None:
        verdict = self._shadow(None)
        assert verdict.decision == "hold"
        assert "waits for paired answers: the monitor's pairs could not be read" in verdict.rule

    def test_an_alike_challenger_passes_the_paired_guardrails(self) -> None:
        pairs = PairCounts(pairs=3_000, disagreements=30, labelled=2_000, only_incumbent=10, only_challenger=12)
        verdict = self._shadow(pairs)
        assert verdict.decision in {"advance", "promote", "continue"}, verdict.rule
        assert evidence_of(verdict, "disagreement").verdict == "pass"
        assert evidence_of(verdict, "pairedAccuracy").verdict in {"pass", "inconclusive"}

    def test_canary_steps_do_not_judge_them_and_alpha_is_shared_by_those_judged(self) -> None:
        window = Window(arm(10_000, errors=100), arm(10_000, errors=1_000), None)
        verdict = live(window, policy=self.POLICY)
        assert verdict.decision == "rollback"
        assert {item.metric for item in verdict.evidence} == {"errorRate"}
        assert "at alpha 0.05" in verdict.rule  # errorRate alone in a canary step: all of alpha.


class TestLatency:
    """The latency guardrail compares the whole histograms: a challenger 30 % slower is rolled back after a few
    hundred requests, where slowRequests (one bucket) needs thousands."""

    POLICY = Policy(rollout(guardrails=[{"name": "latency"}]))

    def test_a_30_percent_slower_challenger_is_rolled_back_on_far_fewer_requests(self) -> None:
        window = Window(lognormal_latency(300, p95=0.04), lognormal_latency(300, p95=0.04, slower=1.3))
        verdict = live(window, policy=self.POLICY)
        assert verdict.decision == "rollback"
        assert verdict.rule.startswith("guardrail latency failed in canary step 1")
        assert "a challenger request was slower than an incumbent's" in verdict.rule
        assert evidence_of(verdict, "latency").incumbent == 0.5
        slow_requests = Policy(rollout(guardrails=[{"name": "slowRequests"}]))
        assert live(window, policy=slow_requests).decision != "rollback"

    def test_an_equally_fast_challenger_goes_on(self) -> None:
        window = Window(lognormal_latency(20_000, p95=0.04), lognormal_latency(20_000, p95=0.04))
        verdict = live(window, policy=self.POLICY)
        assert verdict.decision == "advance"
        # At tolerance 0 an equal challenger is never credibly below it: it is not credibly slower either.
        assert evidence_of(verdict, "latency").verdict == "inconclusive"

    def test_without_histograms_it_holds_and_says_why(self) -> None:
        window = Window(lognormal_latency(20_000, p95=0.04), ArmCounts(requests=1_000, timed=0))
        verdict = live(window, policy=self.POLICY)
        assert verdict.decision == "hold"
        assert "guardrail latency waits for latency: the challenger's requests carry no latency histogram" in (
            verdict.rule
        )

    def test_histograms_on_different_buckets_hold(self) -> None:
        other = ArmCounts(requests=1_000, timed=1_000, latency={0.03: 900, math.inf: 1_000})
        verdict = live(Window(lognormal_latency(20_000, p95=0.04), other), policy=self.POLICY)
        assert verdict.decision == "hold"
        assert "the versions' latency histograms have different buckets" in verdict.rule

    def test_a_broken_histogram_pauses_the_release_unread(self) -> None:
        broken = ArmCounts(requests=1_000, timed=1_000, latency={0.05: 900, 0.1: 800, math.inf: 1_000})
        verdict = live(Window(lognormal_latency(1_000, p95=0.04), broken), policy=self.POLICY)
        assert verdict.decision == "pause"
        assert "is above the bucket le=0.1" in verdict.rule
