"""The release decision: every rule, the order they are taken in, the evidence each verdict carries, what it makes
of readings it cannot use, and seeded looks at A/A releases showing that checking after every scrape does not
roll good challengers back."""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steward_operator import modes, specs
from steward_operator.deciding import (
    DEFAULT_MARGIN,
    Action,
    Policy,
    Timing,
    Verdict,
    Window,
    as_evidence,
    decide,
)
from steward_operator.evidence.base import ArmCounts
from steward_operator.guardrails import slow_threshold
from steward_operator.modes.batch import Batch
from steward_operator.sequential import compare_distributions, compare_rates, non_inferiority
from steward_operator.validation import HeldOut, Holdouts
from steward_predictor.metrics import LATENCY_BUCKETS

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
ACTIONS = typing.get_args(Action)


def rollout(**fields: object) -> specs.Rollout:
    """A rollout as a manifest writes it (camelCase), defaults elsewhere: no shadow, canary 5/25/50, errorRate
    and slowRequests guardrails (tolerance 0 each), confidence 0.95, maxDuration 24h."""
    return specs.Rollout.model_validate(fields)


ONLINE = Policy(rollout())
SHADOWED = Policy(rollout(shadow={}))
BATCH = Policy(rollout(), Batch.layout)


def timing(in_stage: timedelta = timedelta(minutes=30), in_release: timedelta = timedelta(hours=2)) -> Timing:
    return Timing(release_started=NOW - in_release, stage_started=NOW - in_stage, now=NOW)


def arm(
    requests: int,
    errors: int = 0,
    slow: int | None = None,
    predictions: dict[str, int] | None = None,
    slow_after: float | None = 0.25,
) -> ArmCounts:
    """One version's counts: every request timed, 5% slower than the threshold unless told."""
    return ArmCounts(
        requests=requests,
        errors=errors,
        timed=requests,
        slow=requests // 20 if slow is None else slow,
        slow_after=slow_after,
        predictions=predictions or {},
    )


def alike(incumbent: int, challenger: int, error_rate: float = 0.01) -> Window:
    """Both versions at the same error rate and the same share of slow requests."""
    return Window(arm(incumbent, round(incumbent * error_rate)), arm(challenger, round(challenger * error_rate)))


def live(
    window: Window | None,
    phase: specs.Phase = "Canary",
    step: int | None = 0,
    policy: Policy = ONLINE,
    when: Timing | None = None,
) -> Verdict:
    return decide(policy, when or timing(), phase=phase, step=step, window=window, holdouts=None)


def held_out(**metrics: float) -> HeldOut:
    return HeldOut(metrics, "sha256:abc")


def validate(
    incumbent: HeldOut | None,
    challenger: HeldOut | None,
    policy: Policy = ONLINE,
    when: Timing | None = None,
) -> Verdict:
    holdouts = Holdouts(incumbent, challenger)
    return decide(policy, when or timing(), phase="Validating", window=None, holdouts=holdouts)


def evidence_of(verdict: Verdict, metric: str) -> specs.Evidence:
    (found,) = [evidence for evidence in verdict.evidence if evidence.metric == metric]
    return found


LIVE_STAGES = [("Shadowing", None, SHADOWED), ("Canary", 0, ONLINE), ("Canary", 2, ONLINE), ("Shadowing", None, BATCH)]

RELEASES = 200


def rollbacks_after_every_scrape(challenger_rate: float) -> int:
    """Seeded releases of a 5% canary step against an incumbent at 2% errors, decided after each of 40 scrapes of
    100 challenger requests; how many were rolled back at any look."""
    rng = np.random.default_rng(20240601)
    looks, per_scrape = 40, 100
    incumbent = np.cumsum(rng.binomial(per_scrape * 19, 0.02, (RELEASES, looks)), axis=1)
    challenger = np.cumsum(rng.binomial(per_scrape, challenger_rate, (RELEASES, looks)), axis=1)
    policy = Policy(rollout(guardrails=[{"name": "errorRate"}]))
    rolled_back = 0
    for release in range(RELEASES):
        for look in range(looks):
            served = (look + 1) * per_scrape
            window = Window(
                arm(served * 19, int(incumbent[release, look])), arm(served, int(challenger[release, look]))
            )
            if live(window, step=0, policy=policy).decision == "rollback":
                rolled_back += 1
                break
    return rolled_back


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


class TestValidation:
    def test_advances_a_challenger_that_is_not_worse(self) -> None:
        verdict = validate(held_out(rocAuc=0.90), held_out(rocAuc=0.91))
        assert verdict.decision == "advance"
        assert verdict.rule.endswith("on to canary step 1 of 3 (5%)")
        assert "0.91" in verdict.rule
        assert "0.9" in verdict.rule

    def test_rolls_back_a_challenger_that_is_worse(self) -> None:
        verdict = validate(held_out(rocAuc=0.90), held_out(rocAuc=0.89))
        assert verdict.decision == "rollback"
        assert "never receives traffic" in verdict.rule

    @pytest.mark.parametrize(("policy", "following"), [(SHADOWED, "shadow"), (BATCH, "shadow"), (ONLINE, "canary")])
    def test_names_the_stage_that_follows(self, policy: Policy, following: str) -> None:
        verdict = validate(held_out(rmse=2.0), held_out(rmse=1.0), policy)
        assert verdict.decision == "advance"
        assert f"on to {following}" in verdict.rule

    @pytest.mark.parametrize(
        ("metric", "incumbent", "challenger", "tolerance", "decision"),
        [
            # Higher is better.
            ("rocAuc", 0.8, 0.8, 0.0, "advance"),
            ("rocAuc", 0.8, 0.79, 0.0, "rollback"),
            ("accuracy", 0.8, 0.79, 0.02, "advance"),
            ("accuracy", 0.8, 0.78, 0.02, "rollback"),
            # r2 can be negative: the tolerance is a fraction of its size, still downwards.
            ("r2", -0.5, -0.54, 0.1, "advance"),
            ("r2", -0.5, -0.56, 0.1, "rollback"),
            # Lower is better.
            ("rmse", 2.0, 2.5, 0.25, "advance"),
            ("rmse", 2.0, 2.5000001, 0.25, "rollback"),
            ("mae", 2.0, 1.0, 0.0, "advance"),
            ("mae", 2.0, 2.01, 0.0, "rollback"),
            ("logLoss", 0.3, 0.309, 0.05, "advance"),
            ("logLoss", 0.3, 0.32, 0.05, "rollback"),
        ],
    )
    def test_allows_the_tolerance_in_the_right_direction(
        self, metric: str, incumbent: float, challenger: float, tolerance: float, decision: Action
    ) -> None:
        policy = Policy(rollout(validation={"metric": metric, "tolerance": tolerance}))
        verdict = validate(held_out(**{metric: incumbent}), held_out(**{metric: challenger}), policy)
        assert verdict.decision == decision
        assert f"tolerance {tolerance:.2%}" in verdict.rule
        assert ("at least" if metric in {"rocAuc", "accuracy", "r2"} else "at most") in verdict.rule

    def test_records_both_results(self) -> None:
        verdict = validate(held_out(rocAuc=0.90), held_out(rocAuc=0.88))
        assert verdict.evidence == (specs.Evidence(metric="rocAuc", incumbent=0.90, challenger=0.88, verdict="fail"),)

    def test_a_classifier_is_judged_on_roc_auc(self) -> None:
        # Accuracy says worse, ROC AUC better: unset, the metric is ROC AUC.
        verdict = validate(held_out(rocAuc=0.90, accuracy=0.85), held_out(rocAuc=0.92, accuracy=0.80))
        assert verdict.decision == "advance"
        assert [evidence.metric for evidence in verdict.evidence] == ["rocAuc"]

    def test_a_regressor_is_judged_on_rmse(self) -> None:
        verdict = validate(held_out(rmse=3.0, r2=0.7, mae=2.0), held_out(rmse=2.9, r2=0.6, mae=2.5))
        assert verdict.decision == "advance"
        assert [evidence.metric for evidence in verdict.evidence] == ["rmse"]

    def test_a_classifier_without_roc_auc_falls_back_to_accuracy(self) -> None:
        verdict = validate(held_out(accuracy=0.85, logLoss=0.3), held_out(accuracy=0.80, logLoss=0.2))
        assert verdict.decision == "rollback"
        assert [evidence.metric for evidence in verdict.evidence] == ["accuracy"]

    def test_the_metric_the_spec_names_wins(self) -> None:
        policy = Policy(rollout(validation={"metric": "accuracy"}))
        verdict = validate(held_out(rocAuc=0.90, accuracy=0.85), held_out(rocAuc=0.92, accuracy=0.80), policy)
        assert verdict.decision == "rollback"
        assert "accuracy" in verdict.rule

    @pytest.mark.parametrize(
        ("incumbent", "challenger", "missing"),
        [
            (held_out(rocAuc=0.9), None, "the challenger has not reported rocAuc"),
            (None, held_out(rocAuc=0.9), "the incumbent has not reported rocAuc"),
            (None, None, "neither version has reported"),
            (held_out(rocAuc=0.9), held_out(accuracy=0.9), "the challenger has not reported rocAuc"),
            (held_out(f1=0.9), held_out(f1=0.9), "neither version has reported"),
            # A value that is not a number proves nothing.
            (held_out(rocAuc=float("nan")), held_out(rocAuc=0.9), "the incumbent has not reported rocAuc"),
            (held_out(rmse=1.0), held_out(rmse=float("inf")), "the challenger has not reported rmse"),
        ],
    )
    def test_holds_until_both_results_are_known(
        self, incumbent: HeldOut | None, challenger: HeldOut | None, missing: str
    ) -> None:
        verdict = validate(incumbent, challenger)
        assert verdict.decision == "hold"
        assert missing in verdict.rule
        assert all(evidence.verdict == "noData" for evidence in verdict.evidence)

    def test_a_named_metric_neither_reports_is_waited_for(self) -> None:
        policy = Policy(rollout(validation={"metric": "mae"}))
        verdict = validate(held_out(rmse=1.0), held_out(rmse=1.0), policy)
        assert verdict.decision == "hold"
        assert "the incumbent and the challenger have not reported mae" in verdict.rule

    @pytest.mark.parametrize("challenger", [0.91, 0.89])
    def test_says_when_both_were_measured_on_the_same_data(self, challenger: float) -> None:
        verdict = validate(HeldOut({"rocAuc": 0.9}, "fp-1"), HeldOut({"rocAuc": challenger}, "fp-1"))
        assert "measured on the same held-out data (fp-1)" in verdict.rule

    @pytest.mark.parametrize(("challenger", "decision"), [(0.91, "advance"), (0.89, "rollback")])
    def test_says_when_the_data_differed_and_still_decides(self, challenger: float, decision: Action) -> None:
        verdict = validate(HeldOut({"rocAuc": 0.9}, "fp-1"), HeldOut({"rocAuc": challenger}, "fp-2"))
        assert verdict.decision == decision
        assert "measured across different held-out sets (fp-1 and fp-2)" in verdict.rule

    def test_unknown_fingerprints_are_not_the_same_data(self) -> None:
        verdict = validate(HeldOut({"rocAuc": 0.9}, ""), HeldOut({"rocAuc": 0.9}, ""))
        assert "across different held-out sets (unknown and unknown)" in verdict.rule

    def test_disabled_validation_advances_without_evidence(self) -> None:
        policy = Policy(rollout(validation={"enabled": False}))
        verdict = decide(policy, timing(), phase="Validating", window=None, holdouts=None)
        assert verdict.decision == "advance"
        assert "disabled" in verdict.rule

    def test_reads_no_live_counts(self) -> None:
        busy = Window(arm(10_000), arm(10_000, errors=10_000))
        verdict = decide(ONLINE, timing(), phase="Validating", window=busy, holdouts=None)
        assert verdict.decision == "pause"


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


class TestStages:
    @pytest.mark.parametrize("phase", ["Pending", "Stable", "Promoted", "RolledBack", "Failed"])
    def test_refuses_a_phase_no_release_decides_in(self, phase: specs.Phase) -> None:
        with pytest.raises(ValueError, match="no release decides"):
            live(alike(1_000, 1_000), phase, None)

    @pytest.mark.parametrize("step", [None, -1])
    def test_a_canary_needs_a_step(self, step: int | None) -> None:
        with pytest.raises(ValueError, match="step index"):
            live(alike(1_000, 1_000), "Canary", step)

    def test_batch_has_no_canary(self) -> None:
        with pytest.raises(ValueError, match="batch serving has no canary"):
            live(alike(1_000, 1_000), "Canary", 0, BATCH)

    def test_a_policy_comes_from_a_spec(self) -> None:
        spec = specs.ModelDeploymentSpec.model_validate(
            {
                "owner": {"team": "t", "contact": "c", "runbook": "https://runbook"},
                "model": {"version": "v1", "bundle": "s3://models/v1/"},
                "serving": {
                    "mode": "batch",
                    "batch": {"schedule": "@daily", "input": {"uri": "s3://in/"}, "output": {"uri": "s3://out/"}},
                },
            }
        )
        assert modes.policy(spec) == Policy(spec.rollout, Batch.layout)


class TestProperties:
    @given(
        rates=st.tuples(st.floats(0.001, 0.3), st.floats(0.0, 0.3)),
        requests=st.tuples(st.integers(10_000, 2_000_000), st.integers(10_000, 2_000_000)),
        step=st.integers(0, 2),
        shares=st.lists(st.integers(1, 100), min_size=2, max_size=10),
    )
    @settings(derandomize=True, max_examples=200, deadline=None)
    def test_aa_counts_never_roll_back(
        self, rates: tuple[float, float], requests: tuple[int, int], step: int, shares: list[int]
    ) -> None:
        # Both versions at the same rates and the same prediction distribution, up to rounding to whole requests.
        policy = Policy(
            rollout(guardrails=[{"name": "errorRate"}, {"name": "slowRequests"}, {"name": "predictionShift"}])
        )

        error_rate, slow_rate = rates

        def counts(served: int) -> ArmCounts:
            total = sum(shares)
            predictions = {f"bin{index}": served * share // total for index, share in enumerate(shares)}
            return arm(served, round(served * error_rate), round(served * slow_rate), predictions)

        verdict = live(Window(*(counts(served) for served in requests)), step=step, policy=policy)
        assert verdict.decision in {"advance", "promote", "continue"}

    def test_looking_after_every_scrape_rarely_rolls_back_an_equal_challenger(self) -> None:
        assert rollbacks_after_every_scrape(challenger_rate=0.02) <= 0.05 * RELEASES

    def test_looking_after_every_scrape_catches_a_tripled_error_rate(self) -> None:
        assert rollbacks_after_every_scrape(challenger_rate=0.06) >= 0.9 * RELEASES

    @given(
        phase_step=st.sampled_from([("Shadowing", None), ("Canary", 0), ("Canary", 1), ("Canary", 2)]),
        counts=st.tuples(*[st.integers(0, 5_000)] * 4),
        in_stage=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=30)),
    )
    @settings(derandomize=True, max_examples=200, deadline=None)
    def test_any_counts_get_a_verdict_with_a_rule(
        self, phase_step: tuple[specs.Phase, int | None], counts: tuple[int, int, int, int], in_stage: timedelta
    ) -> None:
        requests_i, errors_i, requests_c, errors_c = counts
        window = Window(arm(requests_i, min(errors_i, requests_i)), arm(requests_c, min(errors_c, requests_c)))
        phase, step = phase_step
        first = live(window, phase, step, SHADOWED, timing(in_stage, in_stage))
        assert first.decision in ACTIONS
        assert first.rule
        assert live(window, phase, step, SHADOWED, timing(in_stage, in_stage)) == first


def lognormal_latency(requests: int, p95: float, slower: float = 1.0, sigma: float = 0.5) -> ArmCounts:
    """One version's expected counts when its latency is log-normal with the given p95 (times `slower`), in the
    predictor's latency buckets, every request timed."""
    normal = NormalDist()
    median = p95 * slower / math.exp(normal.inv_cdf(0.95) * sigma)
    latency = {
        bound: round(requests * normal.cdf(math.log(bound / median) / sigma)) if math.isfinite(bound) else requests
        for bound in (*LATENCY_BUCKETS, math.inf)
    }
    return ArmCounts(requests=requests, timed=requests, latency=latency)


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


def hostile_number() -> st.SearchStrategy[float]:
    """Counts as a broken exporter or a confused query could give them."""
    return st.one_of(
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([math.nan, math.inf, -math.inf, -1, 0.5, 2**53 + 1, 10**400]),
    )


@st.composite
def plausible(draw: st.DrawFn) -> ArmCounts:
    """Counts one version could really serve: errors among requests, cumulative latency buckets up to +Inf."""
    requests = draw(st.integers(0, 50_000))
    timed = draw(st.sampled_from([0, requests]))
    latency: dict[float, int] = {}
    if draw(st.booleans()):
        cumulative = sorted(draw(st.lists(st.integers(0, timed), min_size=len(LATENCY_BUCKETS), max_size=13)))
        latency = {**dict(zip(LATENCY_BUCKETS, cumulative, strict=True)), math.inf: timed}
    return ArmCounts(
        requests=requests,
        errors=draw(st.integers(0, requests)),
        timed=timed,
        slow=draw(st.integers(0, timed)),
        slow_after=draw(st.sampled_from([None, 0.25])),
        latency=latency,
        predictions=draw(st.dictionaries(st.sampled_from(["0", "1", "2"]), st.integers(0, 10_000), max_size=3)),
    )


def spoilers(counts: ArmCounts) -> st.SearchStrategy[dict[str, typing.Any]]:
    """Ways one reading of `counts` can be spoilt, as a broken exporter or query would spoil it; {} leaves it."""
    latency, bounds = counts.latency, sorted(counts.latency)
    ways: list[st.SearchStrategy[dict[str, typing.Any]]] = [
        st.just({}),
        st.sampled_from(["requests", "errors", "timed", "slow"]).flatmap(
            lambda name: hostile_number().map(lambda value: {name: value})
        ),
        st.integers(1, 10).map(lambda extra: {"errors": counts.requests + extra}),
        st.sampled_from([math.nan, -1.0, 0.5, math.inf]).map(lambda threshold: {"slow_after": threshold}),
        hostile_number().map(lambda value: {"predictions": {**counts.predictions, "1": value}}),
        st.sampled_from(["requests", "latency", "predictions", "scores"]).map(
            lambda name: {"unusable": {name: "a sample of NaN"}}
        ),
    ]
    if bounds:
        ways += [
            st.tuples(st.sampled_from(bounds), hostile_number()).map(
                lambda spoilt: {"latency": {**latency, **dict([spoilt])}}
            ),
            st.just({"latency": {bound: value for bound, value in latency.items() if bound != math.inf}}),
            st.just({"latency": {**latency, math.nan: 0}}),
        ]
    if len(bounds) > 2:
        # The lowest bucket above the highest finite one: not cumulative.
        ways.append(st.just({"latency": {**latency, bounds[0]: latency[bounds[-2]] + 1}}))
    return st.one_of(ways)


def readings() -> st.SearchStrategy[ArmCounts]:
    """Plausible counts, often with one reading spoilt."""
    return plausible().flatmap(lambda counts: spoilers(counts).map(lambda changes: replace(counts, **changes)))


def is_count(value: object) -> bool:
    """What the engine may count with: a whole, finite, non-negative number a float holds exactly."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and value >= 0 and value == int(value) and value <= 2**53
    except OverflowError:
        return False


def usable(counts: ArmCounts, guardrails: set[str]) -> bool:
    """An oracle written apart from the engine: whether the readings the guardrails need can be used."""
    needed = {"requests"}
    if "slowRequests" in guardrails:
        needed.add("latency")
    if "predictionShift" in guardrails:
        needed.add("predictions")
    requests = is_count(counts.requests) and is_count(counts.errors) and counts.errors <= counts.requests
    latency = "slowRequests" not in guardrails or latency_usable(counts)
    predictions = "predictionShift" not in guardrails or all(map(is_count, counts.predictions.values()))
    return not needed & set(counts.unusable) and requests and latency and predictions


def latency_usable(counts: ArmCounts) -> bool:
    """Timed requests are a count, slow ones too where counted, and the latency buckets are cumulative up to +Inf,
    which holds every timed request."""
    if not is_count(counts.timed):
        return False
    slow = counts.slow_after is None or (
        is_count(counts.slow) and counts.slow <= counts.timed and counts.slow_after >= 0
    )
    if not counts.latency:
        return slow
    if any(math.isnan(bound) for bound in counts.latency) or not all(map(is_count, counts.latency.values())):
        return False
    cumulative = [counts.latency[bound] for bound in sorted(counts.latency)]
    return slow and cumulative == sorted(cumulative) and counts.latency.get(math.inf) == counts.timed


def comparable(incumbent: ArmCounts, challenger: ArmCounts, guardrails: set[str]) -> bool:
    """Both versions' readings can be used, and slow requests, where both counted them, at one threshold."""
    thresholds = {incumbent.slow_after, challenger.slow_after}
    same_threshold = "slowRequests" not in guardrails or None in thresholds or len(thresholds) == 1
    return usable(incumbent, guardrails) and usable(challenger, guardrails) and same_threshold


class TestUnusableReadings:
    """A reading the engine cannot use pauses the release and names the reading: it never raises out of the
    reconcile, and never advances or promotes."""

    @pytest.mark.parametrize(
        ("incumbent", "challenger", "named"),
        [
            (arm(10_000, errors=100), arm(10_000, errors=math.nan), "the challenger's errors (nan) are not a number"),  # type: ignore[arg-type]
            (
                arm(10_000, errors=100),
                arm(1_000, errors=1_200),
                "the challenger's errors (1,200) outnumber its requests (1,000)",
            ),
            (arm(-5), arm(1_000), "the incumbent's requests (-5) are negative"),
            (arm(10_000, errors=100), arm(10_000, errors=math.inf), "the challenger's errors (inf) are not finite"),  # type: ignore[arg-type]
            (arm(10_000), arm(1_000.5), "the challenger's requests (1,000.5) are not a whole number"),  # type: ignore[arg-type]
            (arm(10**30), arm(1_000), "the incumbent's requests (1e+30) are too many to count exactly"),
            (
                arm(10_000, slow=11_000),
                arm(1_000),
                "the incumbent's slow requests (11,000) outnumber its timed requests",
            ),
        ],
    )
    def test_a_count_that_cannot_be_used_pauses_and_is_named(
        self, incumbent: ArmCounts, challenger: ArmCounts, named: str
    ) -> None:
        verdict = live(Window(incumbent, challenger), step=2)
        assert verdict.decision == "pause"
        assert verdict.rule.startswith("unusable reading:")
        assert named in verdict.rule

    def test_a_nan_error_count_used_to_advance(self) -> None:
        verdict = live(Window(arm(20_000, errors=200), arm(1_000, errors=math.nan)))  # type: ignore[arg-type]
        assert verdict.decision == "pause"

    @pytest.mark.parametrize(
        ("latency", "named"),
        [
            ({0.05: 9_600, 0.1: 9_900, math.inf: 9_000}, "the incumbent's latency bucket le=0.1 (9,900) is above"),
            ({0.05: 9_600, 0.1: 9_500, math.inf: 10_000}, "the incumbent's latency bucket le=0.05 (9,600) is above"),
            ({0.05: 9_600, 0.1: 9_900}, "the incumbent's latency has no +Inf bucket"),
            ({0.05: 9_600, math.inf: 9_999}, "the incumbent's +Inf latency bucket (9,999) disagrees"),
            ({math.nan: 9_600, math.inf: 10_000}, "the incumbent's latency has a bucket boundary that is not a number"),
            ({0.05: -1, math.inf: 10_000}, "the incumbent's latency bucket le=0.05 (-1) is negative"),
        ],
    )
    def test_a_latency_histogram_that_cannot_be_used_pauses_and_is_named(
        self, latency: dict[float, int], named: str
    ) -> None:
        incumbent = ArmCounts(requests=10_000, timed=10_000, latency=latency)
        verdict = live(Window(incumbent, lognormal_latency(1_000, p95=0.04)))
        assert verdict.decision == "pause"
        assert named in verdict.rule

    def test_a_broken_histogram_no_guardrail_reads_changes_nothing(self) -> None:
        policy = Policy(rollout(guardrails=[{"name": "errorRate"}]))
        broken = ArmCounts(requests=20_000, errors=200, timed=10_000, latency={0.05: 9_600, math.inf: 10})
        assert live(Window(broken, arm(1_000, errors=10)), policy=policy).decision == "advance"

    def test_what_the_provider_could_not_read_pauses_and_is_named(self) -> None:
        challenger = replace(arm(1_000), unusable={"requests": "a sample of NaN in steward_predictor_requests_total"})
        verdict = live(Window(arm(20_000), challenger))
        assert verdict.decision == "pause"
        assert "the challenger's requests: a sample of NaN in steward_predictor_requests_total" in verdict.rule

    def test_readings_at_different_slow_thresholds_cannot_be_compared(self) -> None:
        verdict = live(Window(arm(20_000, slow_after=0.25), arm(1_000, slow_after=0.5)))
        assert verdict.decision == "pause"
        assert "slow requests above different thresholds (0.25 s and 0.5 s)" in verdict.rule

    def test_an_unusable_reading_waits_even_past_the_maximum_duration(self) -> None:
        # Like an outage: a reading that cannot be used is no reading, and no reading never rolls back by itself.
        overdue = timing(in_release=timedelta(hours=48))
        verdict = live(Window(arm(20_000), arm(1_000, errors=2_000)), when=overdue)
        assert verdict.decision == "pause"

    @pytest.mark.parametrize("value", [math.nan, math.inf, "0.9", None, 10**400])
    def test_a_held_out_result_that_is_not_a_number_is_not_reported(self, value: object) -> None:
        verdict = validate(held_out(rocAuc=0.9), HeldOut({"rocAuc": value}, "d"))  # type: ignore[dict-item]
        assert verdict.decision == "hold"
        assert "the challenger has not reported rocAuc" in verdict.rule

    @given(
        incumbent=readings(),
        challenger=readings(),
        stage=st.sampled_from([("Shadowing", None), ("Canary", 0), ("Canary", 1), ("Canary", 2)]),
        guardrails=st.sets(st.sampled_from(["errorRate", "slowRequests", "predictionShift"])),
        tolerance=st.sampled_from([0.0, 0.01, 0.2]),
        in_stage=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=30)),
    )
    @settings(derandomize=True, max_examples=300, deadline=None)
    def test_any_reading_gets_a_verdict_and_an_unusable_one_never_moves_the_release_on(
        self,
        *,
        incumbent: ArmCounts,
        challenger: ArmCounts,
        stage: tuple[specs.Phase, int | None],
        guardrails: set[str],
        tolerance: float,
        in_stage: timedelta,
    ) -> None:
        policy = Policy(
            rollout(shadow={}, guardrails=[{"name": name, "tolerance": tolerance} for name in sorted(guardrails)])
        )
        phase, step = stage
        verdict = live(Window(incumbent, challenger), phase, step, policy, timing(in_stage, in_stage))
        assert verdict.decision in ACTIONS
        assert verdict.rule
        if not comparable(incumbent, challenger, guardrails):
            assert verdict.decision == "pause"
            assert verdict.rule.startswith("unusable reading:")
        else:
            assert not verdict.rule.startswith("unusable reading:")


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
