"""The release decision before any traffic: a challenger validated on its held-out results against the incumbent's (the
metric each kind of model is judged on, the tolerance in the right direction, results not yet known, held-out data
alike or not), and the stages a decision may be taken in."""

from __future__ import annotations

import pytest

from steward_operator import modes, specs
from steward_operator.deciding import Action, Policy, decide
from steward_operator.guardrails import Window
from steward_operator.modes.batch import Batch
from steward_operator.validation import HeldOut
from tests.support.decisions import BATCH, ONLINE, SHADOWED, alike, arm, held_out, live, rollout, timing, validate


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
