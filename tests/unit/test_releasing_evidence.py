"""Automatic decisions in the release state machine: evidence read for the current stage walks a release to promotion or
rolls a credibly worse challenger back; too little evidence, a metrics outage, and evidence of another stage or read
before the split took effect decide nothing. Every scenario runs as the operator would, reconciling after each change
in the world, and every step is checked to be a fixed point of `advance` for an unchanged world."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from steward_operator import validation
from steward_operator.releases import ALL_TO_INCUMBENT, Evidence
from steward_operator.stages import Stage
from tests.support.releases import World, condition_of, counts, holding, live, reasons, stable, weights_of

# --- automatic decisions ------------------------------------------------------------------------------------


def _held_out(world: World, incumbent: float, challenger: float) -> Evidence:
    status = world.status
    assert status.challenger is not None
    holdouts = validation.Holdouts(
        validation.HeldOut({"rmse": incumbent}, "d1"), validation.HeldOut({"rmse": challenger}, "d1")
    )
    return Evidence(status.challenger.version, Stage("Validating"), status.stage_started, holdouts=holdouts)


def releasing_automatically() -> World:
    """full.yaml releasing v2 (ready): Validating, with no evidence read yet."""
    world = stable("full.yaml")
    world.serve("v2")
    world.become_ready("v2")
    assert world.status.phase == "Validating"
    return world


def test_evidence_walks_a_release_through_every_stage_to_promoted() -> None:
    world = releasing_automatically()
    world.evidence = _held_out(world, 50.0, 49.0)
    step = world.wait()
    assert (step.status.phase, step.status.weights) == ("Shadowing", weights_of(100, 0, 25))
    assert reasons(step) == ["Advanced", "TrafficShifted"]
    assert "not worse than the incumbent's 50" in step.decisions[0].message
    assert step.status.last_analysis is not None
    assert (step.status.last_analysis.phase, step.status.last_analysis.decision) == ("Validating", "advance")

    walked = []
    while world.status.phase != "Promoted":
        # Evidence is read from when the stage's split took effect, so each stage collects its own.
        assert world.status.stage_started == world.now
        world.evidence = live(world, counts(40_000, 40), counts(40_000, 40))
        step = world.wait(timedelta(hours=1))
        walked.append((step.status.phase, step.status.canary_step))
        assert step.status.operation is None
    assert walked == [("Canary", 0), ("Canary", 1), ("Canary", 2), ("Canary", 3), ("Promoted", None)]
    assert step.decisions[0].reason == "Promoted"
    assert "credibly not worse" in step.decisions[0].message
    assert [(entry.version, entry.outcome) for entry in world.status.history] == [("v1", "replaced"), ("v2", "serving")]


def test_too_little_evidence_is_recorded_and_the_stage_goes_on() -> None:
    world = releasing_automatically()
    world.command("promote")
    world.evidence = live(world, counts(500), counts(100))
    step = world.wait()
    assert step.decisions == ()
    assert step.status.phase == "Shadowing"
    analysis = step.status.last_analysis
    assert analysis is not None
    assert (analysis.decision, analysis.phase) == ("continue", "Shadowing")
    assert analysis.rule.startswith("collecting evidence in shadow: 100 of 2,000 challenger requests")
    assert [evidence.metric for evidence in analysis.evidence] == ["errorRate", "slowRequests", "predictionShift"]


def test_a_credibly_worse_challenger_is_rolled_back_and_stays_so() -> None:
    world = releasing_automatically()
    world.command("promote")
    world.command("promote")
    assert world.status.phase == "Canary"
    world.evidence = live(world, counts(20_000, 20), counts(1_000, 100))
    step = world.wait()
    status = step.status
    assert (status.phase, status.challenger, status.weights) == ("RolledBack", None, ALL_TO_INCUMBENT)
    (decision,) = step.decisions
    assert (decision.reason, decision.warning) == ("RolledBack", True)
    assert decision.message.startswith("v2 rolled back: guardrail errorRate failed in canary step 1 of 4")
    assert status.rolled_back is not None
    assert status.rolled_back.version == "v2"
    assert [(entry.version, entry.outcome) for entry in status.history] == [("v1", "serving"), ("v2", "rolledBack")]
    assert holding(status) == {"Stalled": "RolledBack"}
    world.evidence = None
    assert world.wait(timedelta(days=30)).status.challenger is None


def test_a_worse_held_out_result_rolls_back_before_any_traffic() -> None:
    world = releasing_automatically()
    world.evidence = _held_out(world, 50.0, 60.0)
    step = world.wait()
    assert step.status.phase == "RolledBack"
    assert step.decisions[0].message.endswith("it never receives traffic")


def test_a_metrics_outage_pauses_the_release_and_says_so_once() -> None:
    world = releasing_automatically()
    world.command("promote")
    # Neither part: the provider could not be read.
    world.evidence = Evidence("v2", Stage("Shadowing"), world.status.stage_started)
    step = world.wait()
    assert step.status.phase == "Shadowing"
    (decision,) = step.decisions
    assert (decision.reason, decision.warning) == ("AnalysisPaused", True)
    assert decision.message.startswith("metrics are unavailable")
    assert "automatic decisions wait: metrics are unavailable" in condition_of(step.status, "Reconciling").message
    # Past the maximum duration, too: an outage neither promotes nor rolls back.
    step = world.wait(timedelta(days=2))
    assert (step.status.phase, step.decisions) == ("Shadowing", ())
    # Metrics back: the verdict is taken on them (here, past the maximum duration, the incumbent stays).
    world.evidence = live(world, counts(40_000), counts(40_000))
    assert world.wait().status.phase == "RolledBack"


@pytest.mark.parametrize(
    "case", ["another stage", "another challenger", "an earlier split", "paused", "traffic not moved"]
)
def test_evidence_that_is_not_this_stages_decides_nothing(case: str) -> None:
    world = releasing_automatically()
    world.command("promote")
    world.evidence = live(world, counts(40_000, 40), counts(40_000, 4_000))  # Credibly worse.
    if case == "another stage":
        world.evidence = replace(world.evidence, stage=Stage("Canary", 0))
    elif case == "another challenger":
        world.evidence = replace(world.evidence, version="v3")
    elif case == "an earlier split":
        world.evidence = replace(world.evidence, since=world.now - timedelta(hours=1))
    elif case == "paused":
        world.command("pause")
    else:
        world.ready = {"v1"}
        world.command("retry")
        world.command("promote")
        world.evidence = live(world, counts(40_000, 40), counts(40_000, 4_000))
        assert world.status.weights == ALL_TO_INCUMBENT
    # Within the progress deadline, so that only the evidence could end the stage.
    step = world.wait(timedelta(minutes=5) if case == "traffic not moved" else timedelta(hours=1))
    assert step.status.phase == "Shadowing"
    assert step.decisions == ()


def test_evidence_read_before_the_split_took_effect_is_not_judged() -> None:
    world = stable("batch.yaml")
    world.serve("v2")
    world.command("promote")  # Shadowing, but v2 is not ready: no shadow runs yet.
    assert world.status.weights == ALL_TO_INCUMBENT
    world.evidence = live(world, counts(40_000), counts(40_000))
    step = world.become_ready("v2")  # The split takes effect in this very step; the reading predates it.
    assert step.status.weights == weights_of(100, 0, 100)
    assert step.status.stage_started == world.now
    assert step.status.last_analysis is None
