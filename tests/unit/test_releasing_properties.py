"""Properties of the release state machine over any sequence of events (spec changes, commands, readiness, time passing,
metric readings): traffic moves only to a ready challenger, status stays consistent and is what the API server
accepts, and each stage records when it began. Every scenario runs as the operator would, reconciling after each
change in the world, and every step is checked to be a fixed point of `advance` for an unchanged world."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steward_operator import specs, validation
from steward_operator.releases import RELEASE_PHASES, Evidence, Step, target_weights
from steward_operator.stages import Stage
from tests.support.releases import WEEK, Action, World, counts, live, reasons, stable

# --- properties over any sequence of events ------------------------------------------------------------------

VERSIONS = ("v1", "v2", "v3")
ACTIONS: tuple[Action, ...] = (
    "promote",
    "promote",
    "promote",
    "promoteFull",
    "abort",
    "retry",
    "pause",
    "resume",
    "rollback",
    "retrain",
)


@dataclass(frozen=True)
class SpecChange:
    version: str


@dataclass(frozen=True)
class Command:
    action: Action
    to_version: str | None


@dataclass(frozen=True)
class Readiness:
    ready: frozenset[str]


@dataclass(frozen=True)
class Wait:
    duration: timedelta


@dataclass(frozen=True)
class Reading:
    """The metrics as read for the current stage: alike, the challenger much worse, or unreadable."""

    kind: Literal["alike", "worse", "outage"]


Event = SpecChange | Command | Readiness | Wait | Reading
EVENTS = st.one_of(
    st.builds(SpecChange, st.sampled_from(VERSIONS)),
    st.builds(Command, st.sampled_from(ACTIONS), st.sampled_from((None, *VERSIONS, "v9"))),
    st.builds(Command, st.sampled_from(("promote", "promoteFull")), st.none()),
    # Mostly everything is ready, so releases get somewhere; sometimes any version is not.
    st.builds(Readiness, st.just(frozenset(VERSIONS)) | st.frozensets(st.sampled_from(VERSIONS))),
    st.builds(Wait, st.sampled_from((timedelta(minutes=5), WEEK + timedelta(hours=1)))),
    st.builds(Reading, st.sampled_from(("alike", "worse", "outage"))),
)


def _happen(world: World, event: Event) -> Step:
    """The event, then the reconcile it causes (which checks its result is a fixed point)."""
    match event:
        case SpecChange(version):
            return world.serve(version)
        case Command(action, to_version):
            world.now += timedelta(minutes=1)
            wanted = specs.Operation(action=action, to_version=to_version, requested_at=world.now)
            world.status = world.status.model_copy(update={"operation": wanted})
        case Readiness(ready):
            world.ready = set(ready)
        case Wait(duration):
            world.now += duration
        case Reading(kind):
            world.evidence = _reading(world, kind)
    return world.reconcile()


def _reading(world: World, kind: str) -> Evidence | None:
    status = world.status
    if status.challenger is None or status.phase not in RELEASE_PHASES:
        return None
    if status.weights != target_weights(world.spec, status):
        return None  # As reconciling.gather: nothing is read for a stage whose split has not taken effect.
    stage = Stage(status.phase or "Validating", status.canary_step)
    if kind == "outage":
        return Evidence(status.challenger.version, stage, status.stage_started)
    if stage.phase == "Validating":
        score = 1.0 if kind == "alike" else 2.0
        holdouts = validation.Holdouts(validation.HeldOut({"rmse": 1.0}, "d"), validation.HeldOut({"rmse": score}, "d"))
        return Evidence(status.challenger.version, stage, status.stage_started, holdouts=holdouts)
    errors = 40 if kind == "alike" else 4_000
    return live(world, counts(40_000, 40), counts(40_000, errors))


def _check(world: World, before: specs.ModelDeploymentStatus, step: Step) -> None:
    status = step.status
    weights = status.weights
    assert weights is not None
    assert weights.incumbent + weights.challenger == 100
    challenger = status.challenger
    if challenger is None:
        assert (weights.challenger, weights.shadow) == (0, 0)
    elif weights.challenger or weights.shadow:
        moved = weights != before.weights or challenger != before.challenger
        assert not moved or challenger.version in world.ready, "traffic moved to a challenger that is not ready"
    assert (status.phase in RELEASE_PHASES) == (challenger is not None and status.phase != "RolledBack")
    assert (status.canary_step is not None) == (status.phase == "Canary")
    serving = [entry for entry in status.history if entry.outcome == "serving"]
    assert len(serving) == 1
    assert all(entry.ended is not None for entry in status.history if entry is not serving[0])
    assert status.incumbent is not None
    assert (serving[0].version, serving[0].bundle, serving[0].ended) == (
        status.incumbent.version,
        status.incumbent.bundle,
        None,
    )
    assert status.observed_generation == world.generation
    assert sorted(condition.type for condition in status.conditions) == ["Ready", "Reconciling", "Stalled"]
    assert [condition.status for condition in status.conditions].count("True") == 1
    assert all(condition.observed_generation == world.generation for condition in status.conditions)
    operation = status.operation
    if operation is not None:
        assert operation.handled_at is not None
        assert operation.result
    if before.paused and status.paused:
        assert not {"ReleaseStarted"} & set(reasons(step)), "a release started while paused"
    # What the operator writes is what the API server accepts and gives back.
    written = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert specs.ModelDeploymentStatus.model_validate(written) == status


@pytest.mark.parametrize("example", ["online.yaml", "full.yaml", "batch.yaml", "streaming.yaml"])
@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(EVENTS, min_size=5, max_size=40))
def test_any_sequence_of_events_keeps_the_invariants(example: str, events: list[Event]) -> None:
    world = World(example, ready={"v1"})
    before = world.status
    step = world.reconcile()
    _check(world, before, step)
    for event in events:
        before = world.status
        step = _happen(world, event)
        _check(world, before, step)


def _stage(world: World) -> datetime | None:
    return world.status.stage_started


def test_each_stage_records_when_it_began_so_its_evidence_is_counted_from_there() -> None:
    world = stable("full.yaml")
    assert _stage(world) is None
    world.serve("v2")
    validating_since = world.now
    assert (world.status.phase, _stage(world)) == ("Validating", validating_since)
    world.become_ready("v2")
    assert _stage(world) == validating_since  # Same stage, however many reconciles.
    world.command("promote")
    assert (world.status.phase, _stage(world)) == ("Shadowing", world.now)
    world.command("promote")
    first_step = world.now
    assert (world.status.phase, world.status.canary_step, _stage(world)) == ("Canary", 0, first_step)
    world.wait()
    assert _stage(world) == first_step
    world.command("promote")
    assert (world.status.canary_step, _stage(world)) == (1, world.now)
    world.command("promoteFull")
    assert (world.status.phase, _stage(world)) == ("Promoted", None)
