"""The release state machine: from spec, status and what is observed, the next status and the decisions on the
way. Every scenario runs as the operator would, reconciling after each change in the world, and every step is
checked to be a fixed point of `advance` for an unchanged world."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steward_operator import deciding, retraining, specs, validation
from steward_operator.children import Owner
from steward_operator.evidence.base import ArmCounts
from steward_operator.releases import (
    ALL_TO_INCUMBENT,
    RELEASE_PHASES,
    Decision,
    Evidence,
    Observed,
    Step,
    same_model,
    stages,
    target_weights,
)
from steward_operator.releasing import advance, stall
from steward_operator.stages import Stage
from tests.conftest import REPOSITORY

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
WEEK = timedelta(hours=168)  # rollout.rollbackWindow in every example
Action = Literal["promote", "promoteFull", "abort", "retry", "pause", "resume", "rollback", "retrain"]


def _spec(example: str = "online.yaml", **rollout: object) -> specs.ModelDeploymentSpec:
    """An example manifest's spec, serving v1, with `rollout` fields replaced."""
    manifest = yaml.safe_load((REPOSITORY / "examples" / example).read_text())
    manifest["spec"]["model"] = _model(example, "v1").model_dump(by_alias=True, exclude_none=True)
    manifest["spec"].setdefault("rollout", {}).update(rollout)
    return specs.ModelDeploymentSpec.model_validate(manifest["spec"])


def _model(example: str, version: str, digest: str | None = None) -> specs.ModelRef:
    return specs.ModelRef(
        version=version, bundle=f"s3://models/{example.removesuffix('.yaml')}/{version}/", digest=digest
    )


def _weights(incumbent: int, challenger: int, shadow: int) -> specs.Weights:
    return specs.Weights(incumbent=incumbent, challenger=challenger, shadow=shadow)


def _condition(status: specs.ModelDeploymentStatus, kind: str) -> specs.Condition:
    (found,) = [condition for condition in status.conditions if condition.type == kind]
    return found


def _holding(status: specs.ModelDeploymentStatus) -> dict[str, str]:
    """Which of kstatus's three conditions hold, and why: {"Ready": "Stable"} for a healthy deployment."""
    found = {condition.type: condition for condition in status.conditions}
    return {kind: found[kind].reason for kind in ("Ready", "Reconciling", "Stalled") if found[kind].status == "True"}


def _reasons(step: Step) -> list[str]:
    return [decision.reason for decision in step.decisions]


@dataclass
class World:
    """One ModelDeployment as the operator sees it: its spec, the status it last wrote, the clock and which
    versions' children are ready. Every change is followed by a reconcile, as a watch event would cause."""

    example: str = "online.yaml"
    rollout: dict[str, object] = field(default_factory=dict)
    ready: set[str] = field(default_factory=set)
    status: specs.ModelDeploymentStatus = field(default_factory=specs.ModelDeploymentStatus)
    now: datetime = T0
    generation: int = 1
    evidence: Evidence | None = None
    """What the metrics show of the current stage, as the operator would read it before each reconcile."""
    digests: dict[str, frozenset[str]] = field(default_factory=dict)
    """The bundle digests each version's predictors report."""
    spec: specs.ModelDeploymentSpec = field(init=False)

    def __post_init__(self) -> None:
        self.spec = _spec(self.example, **self.rollout)

    @property
    def observed(self) -> Observed:
        unpinned = {s.version for s in (self.status.incumbent, self.status.challenger) if s and not s.digest}
        digests = {version: found for version, found in self.digests.items() if version in unpinned}
        return Observed(self.generation, self.now, frozenset(self.ready), self.evidence, digests)

    def reconcile(self) -> Step:
        """What the operator does with what it sees: the release step, then retraining (no metrics, no Jobs)."""
        step = advance(self.spec, self.status, self.observed)
        assert_fixed_point(self.spec, step, self.observed)
        owner = Owner(name="churn", namespace="ml", uid="uid-1", traffic=self.spec.rollout.traffic)
        retrained = retraining.step(owner, self.spec, step.status, retraining.Signals(), self.now)
        self.status = retrained.status
        return Step(retrained.status, (*step.decisions, *retrained.decisions))

    def wait(self, duration: timedelta = timedelta(minutes=1)) -> Step:
        self.now += duration
        return self.reconcile()

    def serve(self, version: str) -> Step:
        """spec.model names `version` now: a new generation, as a Git commit makes."""
        self.spec = self.spec.model_copy(update={"model": _model(self.example, version)})
        self.generation += 1
        self.now += timedelta(minutes=1)
        return self.reconcile()

    def command(self, action: Action, to_version: str | None = None) -> Step:
        """What `kubectl steward ACTION` writes to status, then the reconcile it causes."""
        self.now += timedelta(minutes=1)
        wanted = specs.Operation(action=action, to_version=to_version, requested_at=self.now, requested_by="ana")
        self.status = self.status.model_copy(update={"operation": wanted})
        return self.reconcile()

    def become_ready(self, *versions: str) -> Step:
        self.ready |= set(versions)
        return self.wait()


def assert_fixed_point(spec: specs.ModelDeploymentSpec, step: Step, observed: Observed) -> None:
    again = advance(spec, step.status, observed)
    assert again.status == step.status
    assert again.decisions == ()


def stable(example: str = "online.yaml", **rollout: object) -> World:
    """A deployment serving v1, ready."""
    world = World(example, rollout, ready={"v1"})
    world.reconcile()
    assert world.status.phase == "Stable"
    return world


def promoted(example: str = "online.yaml", **rollout: object) -> World:
    """v1 replaced by v2 through a full release; v2 serves and v1's children are gone."""
    world = stable(example, **rollout)
    world.serve("v2")
    world.become_ready("v2")
    world.command("promoteFull")
    world.ready = {"v2"}
    world.wait()
    assert world.status.phase == "Promoted"
    return world


# --- a new ModelDeployment -----------------------------------------------------------------------------------


def test_a_new_deployment_adopts_its_model_as_the_incumbent_with_all_traffic() -> None:
    world = World(generation=3)
    step = world.reconcile()
    status = step.status
    assert status.phase == "Pending"
    assert status.incumbent == specs.ServedVersion(version="v1", bundle="s3://models/online/v1/", since=T0)
    assert status.challenger is None
    assert status.weights == _weights(100, 0, 0)
    assert status.history == [specs.HistoryEntry(version="v1", bundle="s3://models/online/v1/", started=T0)]
    assert status.history[0].outcome == "serving"
    assert status.observed_generation == 3
    assert step.decisions == (Decision("Deploying", "serving v1 from s3://models/online/v1/"),)
    assert _holding(status) == {"Reconciling": "WaitingForReady"}
    assert "waiting for v1 to become ready" in _condition(status, "Reconciling").message


def test_the_incumbent_is_stable_once_its_version_is_ready() -> None:
    world = World()
    world.reconcile()
    world.ready = {"v1"}
    step = world.wait()
    assert step.status.phase == "Stable"
    assert step.decisions == (Decision("Ready", "v1 is serving"),)
    assert _holding(step.status) == {"Ready": "Stable"}
    assert _condition(step.status, "Ready").message == "v1 serves all traffic"


def test_a_version_ready_at_first_sight_is_stable_in_one_step() -> None:
    step = World(ready={"v1"}).reconcile()
    assert step.status.phase == "Stable"
    assert _reasons(step) == ["Deploying", "Ready"]


def test_readiness_of_another_version_does_not_make_the_incumbent_stable() -> None:
    step = World(ready={"v0"}).reconcile()
    assert step.status.phase == "Pending"


def test_every_condition_carries_the_generation_it_was_computed_from() -> None:
    world = World(generation=7)
    world.reconcile()
    assert {condition.type for condition in world.status.conditions} == {"Ready", "Reconciling", "Stalled"}
    assert {condition.observed_generation for condition in world.status.conditions} == {7}
    world.generation = 8
    world.wait()
    assert {condition.observed_generation for condition in world.status.conditions} == {8}
    assert world.status.observed_generation == 8


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    world = World()
    world.reconcile()
    world.wait(timedelta(minutes=10))
    assert {condition.last_transition_time for condition in world.status.conditions} == {T0}
    world.ready = {"v1"}
    later = world.wait(timedelta(minutes=10)).status
    ready_at = T0 + timedelta(minutes=20)
    assert _condition(later, "Ready").last_transition_time == ready_at
    assert _condition(later, "Reconciling").last_transition_time == ready_at
    assert _condition(later, "Stalled").last_transition_time == T0
    # A new reason or message under the same status is no transition.
    world.serve("v2")
    assert _condition(world.status, "Stalled").last_transition_time == T0


def test_conditions_of_other_types_are_kept() -> None:
    world = stable()
    own = specs.Condition(type="Drifting", status="True", last_transition_time=T0, reason="Psi", message="age")
    world.status = world.status.model_copy(update={"conditions": [*world.status.conditions, own]})
    world.wait()
    assert _condition(world.status, "Drifting") == own
    assert len(world.status.conditions) == 4


def test_a_pinned_digest_is_carried_into_the_incumbent_and_its_history() -> None:
    spec = specs.ModelDeploymentSpec.model_validate(
        yaml.safe_load((REPOSITORY / "examples" / "full.yaml").read_text())["spec"]
    )
    world = World("full.yaml")
    world.spec = spec
    status = world.reconcile().status
    assert spec.model.digest is not None
    assert status.incumbent is not None
    assert status.incumbent.digest == spec.model.digest
    assert status.history[0].digest == spec.model.digest


def test_pinning_the_digest_of_the_serving_bundle_starts_no_release() -> None:
    world = stable()
    world.spec = world.spec.model_copy(update={"model": _model("online.yaml", "v1", "sha256:" + "b" * 64)})
    step = world.wait()
    assert step.status.challenger is None
    assert step.decisions == ()


def test_same_model_compares_version_bundle_and_a_pinned_digest() -> None:
    model = _model("online.yaml", "v1", "sha256:" + "a" * 64)
    served = specs.ServedVersion(version="v1", bundle=model.bundle, digest=model.digest)
    assert same_model(served, model)
    assert same_model(served.model_copy(update={"digest": None}), model)
    assert not same_model(served.model_copy(update={"digest": "sha256:" + "b" * 64}), model)
    assert not same_model(served.model_copy(update={"bundle": "s3://models/online/v1-rebuilt/"}), model)
    assert not same_model(served.model_copy(update={"version": "v2"}), model)
    assert not same_model(None, model)


# --- the stages of a release ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "rollout", "expected"),
    [
        ("online.yaml", {}, ["Validating", "Canary 0", "Canary 1", "Canary 2", "Promoted"]),
        ("online.yaml", {"validation": {"enabled": False}}, ["Canary 0", "Canary 1", "Canary 2", "Promoted"]),
        ("online.yaml", {"shadow": {}, "canary": {"steps": [10]}}, ["Validating", "Shadowing", "Canary 0", "Promoted"]),
        (
            "full.yaml",
            {},
            ["Validating", "Shadowing", "Canary 0", "Canary 1", "Canary 2", "Canary 3", "Promoted"],
        ),
        ("batch.yaml", {}, ["Validating", "Shadowing", "Promoted"]),
        ("batch.yaml", {"shadow": None, "validation": {"enabled": False}}, ["Shadowing", "Promoted"]),
    ],
)
def test_a_release_passes_the_stages_its_spec_asks_for(
    example: str, rollout: dict[str, object], expected: list[str]
) -> None:
    found = stages(_spec(example, **rollout))
    assert [stage.phase if stage.step is None else f"{stage.phase} {stage.step}" for stage in found] == expected


def test_a_batch_release_has_no_canary_whatever_its_steps() -> None:
    spec = _spec("batch.yaml", canary={"steps": [5, 50]})
    assert all(stage.phase != "Canary" for stage in stages(spec))


@pytest.mark.parametrize(
    ("example", "phase", "step", "expected"),
    [
        ("full.yaml", "Validating", None, (100, 0, 0)),
        ("full.yaml", "Shadowing", None, (100, 0, 25)),
        ("full.yaml", "Canary", 0, (95, 5, 0)),
        ("full.yaml", "Canary", 3, (25, 75, 0)),
        ("online.yaml", "Canary", 1, (75, 25, 0)),
        ("batch.yaml", "Shadowing", None, (100, 0, 100)),
        ("full.yaml", "RolledBack", None, (100, 0, 0)),
        ("full.yaml", "Promoted", None, (100, 0, 0)),
    ],
)
def test_the_stage_sets_the_traffic_split(
    example: str, phase: specs.Phase, step: int | None, expected: tuple[int, int, int]
) -> None:
    challenger = specs.ServedVersion(version="v2", bundle="s3://models/v2/")
    status = specs.ModelDeploymentStatus(phase=phase, canary_step=step, challenger=challenger)
    assert target_weights(_spec(example), status) == _weights(*expected)


def test_without_a_challenger_the_incumbent_takes_everything() -> None:
    status = specs.ModelDeploymentStatus(phase="Canary", canary_step=1)
    assert target_weights(_spec(), status) == ALL_TO_INCUMBENT == _weights(100, 0, 0)


# --- starting a release --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "rollout", "first"),
    [
        ("online.yaml", {}, Stage("Validating")),
        ("full.yaml", {"validation": {"enabled": False}}, Stage("Shadowing")),
        ("online.yaml", {"validation": {"enabled": False}}, Stage("Canary", 0)),
        ("batch.yaml", {"validation": {"enabled": False}}, Stage("Shadowing")),
    ],
)
def test_a_new_spec_model_starts_a_release_at_the_first_stage(
    example: str, rollout: dict[str, object], first: Stage
) -> None:
    world = stable(example, **rollout)
    step = world.serve("v2")
    status = step.status
    assert (status.phase, status.canary_step) == (first.phase, first.step)
    assert status.challenger == specs.ServedVersion(
        version="v2", bundle=f"s3://models/{example.removesuffix('.yaml')}/v2/", since=world.now
    )
    assert status.incumbent is not None
    assert status.incumbent.version == "v1"
    assert status.weights == ALL_TO_INCUMBENT  # v2 is not ready yet
    assert step.decisions[0].reason == "ReleaseStarted"
    assert step.decisions[0].message.startswith("releasing v2: ")
    assert _holding(status) == {"Reconciling": first.phase}
    assert status.observed_generation == world.generation


def test_traffic_waits_for_the_challenger_to_become_ready() -> None:
    world = stable(validation={"enabled": False})
    step = world.serve("v2")
    assert (step.status.phase, step.status.canary_step) == ("Canary", 0)
    assert step.status.weights == ALL_TO_INCUMBENT
    message = _condition(step.status, "Reconciling").message
    assert message == (
        "releasing v2: canary step 1 of 3, 5% of traffic; waiting for v2 to become ready before traffic moves"
        " (rolled back if it is not ready within 10m)"
    )
    step = world.become_ready("v2")
    assert step.status.weights == _weights(95, 5, 0)
    assert step.decisions == (Decision("TrafficShifted", "incumbent 95%, challenger 5%, shadow 0%"),)
    assert _condition(step.status, "Reconciling").message == "releasing v2: canary step 1 of 3, 5% of traffic"


def test_validation_takes_no_traffic_even_when_the_challenger_is_ready() -> None:
    world = stable()
    world.ready.add("v2")
    step = world.serve("v2")
    assert step.status.phase == "Validating"
    assert step.status.weights == ALL_TO_INCUMBENT
    assert _condition(step.status, "Reconciling").message == "releasing v2: offline validation against the incumbent"


def test_a_release_can_start_before_the_incumbent_is_ready() -> None:
    world = World()
    world.reconcile()
    step = world.serve("v2")
    assert step.status.phase == "Validating"
    assert step.status.challenger is not None


# --- commands ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "result"),
    [
        ("promote", "refused: no release is in progress"),
        ("promoteFull", "refused: no release is in progress"),
        ("abort", "refused: no release is in progress"),
        ("retry", "refused: there is no release to retry"),
        ("resume", "refused: already running"),
        ("rollback", "refused: an earlier known-good version is not in this model's history"),
        ("retrain", "refused: spec.retraining is not set: there is no Job template to run"),
        ("pause", "automatic steps halt"),
    ],
)
def test_a_command_on_a_stable_deployment_is_carried_out_or_refused_and_marked_handled(
    action: Action, result: str
) -> None:
    world = stable()
    before = world.status
    step = world.command(action)
    operation = step.status.operation
    assert operation is not None
    assert operation.handled_at == world.now
    assert operation.result == result
    assert (operation.action, operation.requested_by, operation.requested_at) == (action, "ana", world.now)
    if result.startswith("refused"):
        assert step.decisions == (Decision("CommandRefused", f"{action}: {result.removeprefix('refused: ')}", True),)
        assert step.status.model_copy(update={"operation": None}) == before.model_copy(update={"operation": None})
    else:
        assert step.decisions == (Decision("Paused", "automatic steps halt"),)


def test_a_handled_command_is_not_carried_out_twice() -> None:
    world = stable()
    world.serve("v2")
    world.ready.add("v2")
    first = world.command("promote")
    assert first.status.phase == "Canary"
    for _ in range(3):
        again = world.wait(timedelta(hours=1))
        assert again.decisions == ()
        assert again.status.canary_step == 0
        assert again.status.operation == first.status.operation


def test_a_new_command_replaces_the_handled_one() -> None:
    world = stable()
    world.serve("v2")
    world.ready.add("v2")
    world.command("promote")
    step = world.command("promote")
    assert step.status.canary_step == 1
    assert step.status.operation is not None
    assert step.status.operation.result == "v2: canary step 2 of 3, 25% of traffic"


def test_a_command_written_before_the_first_reconcile_is_handled_after_adoption() -> None:
    world = World(ready={"v1"})
    wanted = specs.Operation(action="pause", requested_at=T0)
    world.status = specs.ModelDeploymentStatus(operation=wanted)
    step = world.reconcile()
    assert step.status.paused
    assert _reasons(step) == ["Deploying", "Paused", "Ready"]


# --- walking a release to the end ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "walk"),
    [
        (
            "online.yaml",
            [("Canary", 0, (95, 5, 0)), ("Canary", 1, (75, 25, 0)), ("Canary", 2, (50, 50, 0))],
        ),
        (
            "full.yaml",
            [
                ("Shadowing", None, (100, 0, 25)),
                ("Canary", 0, (95, 5, 0)),
                ("Canary", 1, (75, 25, 0)),
                ("Canary", 2, (50, 50, 0)),
                ("Canary", 3, (25, 75, 0)),
            ],
        ),
        ("batch.yaml", [("Shadowing", None, (100, 0, 100))]),
    ],
)
def test_promote_walks_a_release_through_every_stage_to_promoted(
    example: str, walk: list[tuple[specs.Phase, int | None, tuple[int, int, int]]]
) -> None:
    world = stable(example)
    world.serve("v2")
    world.become_ready("v2")
    assert world.status.phase == "Validating"
    for phase, index, weights in walk:
        step = world.command("promote")
        assert (step.status.phase, step.status.canary_step) == (phase, index)
        assert step.status.weights == _weights(*weights)
        assert _reasons(step) == ["Advanced", "TrafficShifted"]
        assert step.status.operation is not None
        assert step.status.operation.result == step.decisions[0].message
        assert _holding(step.status) == {"Reconciling": phase}
    step = world.command("promote")
    status = step.status
    assert step.decisions == (Decision("Promoted", "v2 is promoted and serves all traffic"),)
    assert status.phase == "Promoted"
    assert status.canary_step is None
    assert status.challenger is None
    assert status.incumbent == specs.ServedVersion(version="v2", bundle=_model(example, "v2").bundle, since=world.now)
    assert status.weights == ALL_TO_INCUMBENT
    assert _holding(status) == {"Ready": "Promoted"}
    assert _condition(status, "Ready").message == "v2 serves all traffic"


def test_after_promotion_history_records_the_replaced_incumbent_and_the_new_one_serving() -> None:
    world = promoted()
    old, new = world.status.history
    assert (old.version, old.outcome, old.started) == ("v1", "replaced", T0)
    assert old.ended is not None
    assert new.started == old.ended
    assert (new.version, new.bundle, new.outcome, new.ended) == ("v2", "s3://models/online/v2/", "serving", None)


def test_shadow_traffic_waits_for_the_challenger_to_become_ready() -> None:
    world = stable("full.yaml")
    world.serve("v2")
    step = world.command("promote")
    assert step.status.phase == "Shadowing"
    assert step.status.weights == ALL_TO_INCUMBENT
    assert _reasons(step) == ["Advanced"]
    assert _condition(step.status, "Reconciling").message.endswith(
        "waiting for v2 to become ready before traffic moves (rolled back if it is not ready within 10m)"
    )
    step = world.become_ready("v2")
    assert step.status.weights == _weights(100, 0, 25)


def test_the_canary_advances_while_the_challenger_is_not_ready_but_traffic_stays() -> None:
    world = stable(validation={"enabled": False})
    world.serve("v2")
    world.command("promote")
    step = world.command("promote")
    assert (step.status.phase, step.status.canary_step) == ("Canary", 2)
    assert step.status.weights == ALL_TO_INCUMBENT
    step = world.become_ready("v2")
    assert step.status.weights == _weights(50, 50, 0)


def test_promotion_to_all_traffic_is_refused_while_the_challenger_is_not_ready() -> None:
    world = stable(validation={"enabled": False}, canary={"steps": [50]})
    world.serve("v2")
    world.become_ready("v2")
    assert world.status.weights == _weights(50, 50, 0)
    world.ready.discard("v2")
    world.wait()
    before = world.status
    step = world.command("promote")
    assert step.status.operation is not None
    assert step.status.operation.result == "refused: v2 is not ready yet; it cannot take all traffic"
    assert step.decisions[0].warning
    assert step.status.model_copy(update={"operation": None}) == before.model_copy(update={"operation": None})
    world.ready.add("v2")
    assert world.command("promote").status.phase == "Promoted"


def test_promote_full_skips_the_remaining_stages() -> None:
    world = stable("full.yaml")
    world.serve("v2")
    world.become_ready("v2")
    step = world.command("promoteFull")
    assert step.status.phase == "Promoted"
    assert step.status.incumbent is not None
    assert step.status.incumbent.version == "v2"
    assert _reasons(step) == ["Promoted"]


def test_promote_full_is_refused_while_the_challenger_is_not_ready() -> None:
    world = stable("full.yaml")
    world.serve("v2")
    step = world.command("promoteFull")
    assert step.status.phase == "Validating"
    assert step.status.operation is not None
    assert step.status.operation.result == "refused: v2 is not ready yet; it cannot take all traffic"


def test_a_promoted_version_is_released_over_by_the_next_one() -> None:
    world = promoted()
    step = world.serve("v3")
    assert step.status.phase == "Validating"
    assert step.status.incumbent is not None
    assert step.status.challenger is not None
    assert (step.status.incumbent.version, step.status.challenger.version) == ("v2", "v3")


# --- abort and retry -----------------------------------------------------------------------------------------


def mid_canary() -> World:
    world = stable()
    world.serve("v2")
    world.become_ready("v2")
    world.command("promote")
    world.command("promote")
    assert world.status.weights == _weights(75, 25, 0)
    return world


def test_abort_rolls_back_and_stalls_while_spec_names_the_aborted_version() -> None:
    world = mid_canary()
    step = world.command("abort")
    status = step.status
    assert status.phase == "RolledBack"
    assert status.challenger is None
    assert status.canary_step is None
    assert status.weights == ALL_TO_INCUMBENT
    assert status.rolled_back == specs.ServedVersion(version="v2", bundle="s3://models/online/v2/", since=world.now)
    assert status.incumbent is not None
    assert status.incumbent.version == "v1"
    # The history keeps the release that ended without a takeover, with its outcome.
    assert [(entry.version, entry.outcome) for entry in status.history] == [("v1", "serving"), ("v2", "aborted")]
    assert status.history[-1].ended == world.now
    assert step.decisions == (Decision("RolledBack", "release of v2 aborted; the incumbent keeps all traffic"),)
    assert status.operation is not None
    assert status.operation.result == "release of v2 aborted; the incumbent keeps all traffic"
    assert _holding(status) == {"Stalled": "RolledBack"}
    assert "`kubectl steward retry`" in _condition(status, "Stalled").message
    # Stays so: the aborted version is not released again by itself.
    assert world.wait(timedelta(days=30)).status.challenger is None


def test_abort_is_refused_during_a_switch_back() -> None:
    world = promoted()
    world.serve("v1")
    assert world.status.phase == "RolledBack"
    step = world.command("abort")
    assert step.status.operation is not None
    assert step.status.operation.result == "refused: a switch back to a known-good version is under way"


def test_retry_after_an_abort_releases_the_version_again() -> None:
    world = mid_canary()
    world.command("abort")
    step = world.command("retry")
    status = step.status
    assert status.rolled_back is None
    assert status.phase == "Validating"
    assert status.challenger is not None
    assert status.challenger.version == "v2"
    assert _reasons(step) == ["ReleaseStarted"]
    assert status.operation is not None
    assert status.operation.result == "done"
    assert _holding(status) == {"Reconciling": "Validating"}


def test_retry_mid_release_restarts_it_from_the_first_stage() -> None:
    world = mid_canary()
    step = world.command("retry")
    assert (step.status.phase, step.status.canary_step) == ("Validating", None)
    assert step.status.weights == ALL_TO_INCUMBENT
    assert step.decisions[0] == Decision("ReleaseRestarted", "releasing v2 again from the start")


def test_a_third_version_after_an_abort_starts_a_new_release() -> None:
    world = mid_canary()
    world.command("abort")
    step = world.serve("v3")
    assert step.status.challenger is not None
    assert step.status.challenger.version == "v3"
    assert step.status.phase == "Validating"
    assert step.status.rolled_back is None
    assert _holding(step.status) == {"Reconciling": "Validating"}


def test_reverting_spec_to_the_incumbent_after_an_abort_clears_the_stall() -> None:
    world = mid_canary()
    world.command("abort")
    step = world.serve("v1")
    assert step.status.rolled_back is None
    assert step.status.challenger is None
    assert step.status.weights == ALL_TO_INCUMBENT
    assert _holding(step.status) == {"Ready": "RolledBack"}


# --- spec changes during a release ---------------------------------------------------------------------------


def test_a_new_version_mid_release_restarts_the_release_for_it() -> None:
    world = mid_canary()
    step = world.serve("v3")
    status = step.status
    assert status.challenger is not None
    assert status.challenger.version == "v3"
    assert (status.phase, status.canary_step) == ("Validating", None)
    assert status.weights == ALL_TO_INCUMBENT
    assert step.decisions[0] == Decision(
        "ReleaseRestarted", "releasing v3: offline validation against the incumbent first"
    )
    assert [entry.version for entry in status.history] == ["v1"]


def test_reverting_spec_to_the_incumbent_mid_release_cancels_it() -> None:
    world = mid_canary()
    step = world.serve("v1")
    status = step.status
    assert status.phase == "Stable"
    assert status.challenger is None
    assert status.canary_step is None
    assert status.rolled_back is None
    assert status.weights == ALL_TO_INCUMBENT
    assert step.decisions[0] == Decision("ReleaseCancelled", "spec.model is v1 again: the release is called off")
    assert _holding(status) == {"Ready": "Stable"}


# --- switching back to a known-good version ------------------------------------------------------------------


def test_reverting_to_a_recently_replaced_version_switches_back_without_a_release() -> None:
    world = promoted()
    step = world.serve("v1")
    status = step.status
    assert status.phase == "RolledBack"
    assert status.challenger is not None
    assert (status.challenger.version, status.challenger.bundle) == ("v1", "s3://models/online/v1/")
    assert status.weights == ALL_TO_INCUMBENT
    assert step.decisions == (Decision("RollingBack", "v1 is known-good: it takes over at once, without a release"),)
    assert _holding(status) == {"Reconciling": "RollingBack"}
    # Once v1 is ready it takes over at once: no validation, no canary.
    world.ready.add("v1")
    step = world.wait()
    status = step.status
    assert step.decisions == (Decision("RolledBack", "v1 serves all traffic again"),)
    assert status.incumbent is not None
    assert status.incumbent.version == "v1"
    assert status.challenger is None
    assert status.weights == ALL_TO_INCUMBENT
    assert [(entry.version, entry.outcome) for entry in status.history] == [
        ("v1", "replaced"),
        ("v2", "rolledBack"),
        ("v1", "serving"),
    ]
    assert status.history[1].ended == world.now
    assert _holding(status) == {"Ready": "RolledBack"}


@pytest.mark.parametrize(
    ("after", "phase"),
    [(timedelta(hours=1), "RolledBack"), (WEEK, "RolledBack"), (WEEK + timedelta(seconds=1), "Validating")],
)
def test_only_a_version_replaced_within_the_rollback_window_is_known_good(after: timedelta, phase: specs.Phase) -> None:
    world = promoted()
    assert world.status.history[0].ended is not None
    world.now = world.status.history[0].ended + after - timedelta(minutes=1)
    step = world.serve("v1")
    assert step.status.phase == phase
    assert step.status.challenger is not None
    assert step.status.challenger.version == "v1"


def test_a_shorter_rollback_window_is_honoured() -> None:
    world = promoted(rollbackWindow="30m")
    world.now += timedelta(hours=1)
    assert world.serve("v1").status.phase == "Validating"


def test_a_version_that_was_rolled_back_is_not_known_good() -> None:
    world = promoted()
    world.ready.add("v1")
    assert world.serve("v1").status.history[-2].outcome == "rolledBack"
    step = world.serve("v2")
    assert step.status.phase == "Validating"


def test_a_switch_back_happens_even_while_paused() -> None:
    world = promoted()
    world.command("pause")
    step = world.serve("v1")
    assert step.status.phase == "RolledBack"


def test_a_switch_back_to_a_version_already_ready_completes_in_one_reconcile() -> None:
    world = promoted()
    world.ready.add("v1")
    step = world.serve("v1")  # World.reconcile also checks the result is a fixed point
    status = step.status
    assert _reasons(step) == ["RollingBack", "RolledBack"]
    assert status.incumbent is not None
    assert status.incumbent.version == "v1"
    assert status.challenger is None
    assert status.rolled_back is None  # spec.model names v1, which serves: nothing is left stalled
    assert status.phase == "RolledBack"
    assert _holding(status) == {"Ready": "RolledBack"}


def test_a_new_version_from_git_is_released_even_when_a_switch_back_never_completes() -> None:
    world = promoted()
    world.serve("v1")
    assert world.status.phase == "RolledBack"
    step = world.serve("v3")
    status = step.status
    assert status.challenger is not None
    assert status.challenger.version == "v3"
    assert status.phase == "Validating"
    assert status.incumbent is not None
    assert status.incumbent.version == "v2"
    assert status.weights == ALL_TO_INCUMBENT
    assert _holding(status) == {"Reconciling": "Validating"}


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_a_switch_back_continues_while_spec_names_the_incumbent_or_the_rolled_back_version(version: str) -> None:
    world = promoted()
    world.serve("v3")
    world.become_ready("v3")
    world.command("rollback", "v1")
    assert world.status.rolled_back is not None
    assert world.status.rolled_back.version == "v3"
    before = world.status
    step = world.serve(version)
    assert step.decisions == ()
    assert step.status.phase == "RolledBack"
    assert step.status.challenger == before.challenger
    assert step.status.rolled_back == before.rolled_back
    assert _holding(step.status) == {"Reconciling": "RollingBack"}
    step = world.become_ready("v1")
    assert step.status.incumbent is not None
    assert step.status.incumbent.version == "v1"


# --- kubectl steward rollback --------------------------------------------------------------------------------


def test_rollback_on_a_stable_deployment_switches_to_the_previous_version() -> None:
    world = promoted()
    step = world.command("rollback")
    status = step.status
    assert status.phase == "RolledBack"
    assert status.challenger is not None
    assert status.challenger.version == "v1"
    assert step.decisions == (Decision("RollingBack", "switching back to v1; it takes all traffic once it is ready"),)
    assert status.operation is not None
    assert status.operation.result == "switching back to v1; it takes all traffic once it is ready"
    step = world.become_ready("v1")
    status = step.status
    assert status.incumbent is not None
    assert status.incumbent.version == "v1"
    assert status.rolled_back is not None
    assert status.rolled_back.version == "v2"
    assert [(entry.version, entry.outcome) for entry in status.history] == [
        ("v1", "replaced"),
        ("v2", "rolledBack"),
        ("v1", "serving"),
    ]
    # Git still names v2: it is not released again until someone says so.
    assert _holding(status) == {"Stalled": "RolledBack"}
    assert _condition(status, "Stalled").message.startswith("v2 was rolled back and v1 serves")
    step = world.command("retry")
    assert step.status.phase == "Validating"
    assert step.status.challenger is not None
    assert step.status.challenger.version == "v2"


def test_rollback_to_a_named_version_from_history() -> None:
    world = promoted()
    world.serve("v3")
    world.become_ready("v3")
    world.command("promoteFull")
    step = world.command("rollback", "v1")
    assert step.status.challenger is not None
    assert step.status.challenger.version == "v1"
    assert step.status.phase == "RolledBack"


def test_rollback_to_a_version_not_in_history_is_refused() -> None:
    world = promoted()
    before = world.status
    step = world.command("rollback", "v9")
    assert step.status.operation is not None
    assert step.status.operation.result == "refused: v9 is not in this model's history"
    assert step.status.model_copy(update={"operation": None}) == before.model_copy(update={"operation": None})


def test_rollback_to_the_serving_version_is_refused() -> None:
    world = promoted()
    before = world.status
    step = world.command("rollback", "v2")
    assert step.status.operation is not None
    assert step.status.operation.result == "refused: v2 already serves"
    assert step.decisions == (Decision("CommandRefused", "rollback: v2 already serves", True),)
    assert step.status.model_copy(update={"operation": None}) == before.model_copy(update={"operation": None})


def test_rollback_on_a_first_version_is_refused() -> None:
    step = stable().command("rollback")
    assert step.status.operation is not None
    assert step.status.operation.result == "refused: an earlier known-good version is not in this model's history"


def rolled_back_from_v3_to_v2() -> World:
    """v1 replaced by v2, v2 by v3, then `rollback`: v2 serves again and Git still names v3 (Stalled)."""
    world = promoted()
    world.serve("v3")
    world.become_ready("v3")
    world.command("promoteFull")
    world.command("rollback")
    world.become_ready("v2")
    assert [(entry.version, entry.outcome) for entry in world.status.history] == [
        ("v1", "replaced"),
        ("v2", "replaced"),
        ("v3", "rolledBack"),
        ("v2", "serving"),
    ]
    assert _holding(world.status) == {"Stalled": "RolledBack"}
    return world


def test_rollback_without_a_version_skips_versions_that_were_rolled_back() -> None:
    world = rolled_back_from_v3_to_v2()
    world.serve("v2")
    step = world.command("rollback")
    assert step.status.challenger is not None
    assert step.status.challenger.version == "v1"
    assert step.status.phase == "RolledBack"


def test_a_rollback_while_a_rolled_back_version_is_stalled_does_not_release_that_version_again() -> None:
    world = rolled_back_from_v3_to_v2()
    step = world.command("rollback")
    assert step.decisions == (Decision("RollingBack", "switching back to v1; it takes all traffic once it is ready"),)
    assert step.status.phase == "RolledBack"
    assert step.status.challenger is not None
    assert step.status.challenger.version == "v1"
    assert step.status.rolled_back is not None
    assert step.status.rolled_back.version == "v3"


def test_rollback_without_a_version_never_returns_to_one_that_was_rolled_back() -> None:
    world = promoted()
    world.command("rollback")
    world.become_ready("v1")
    assert [(entry.version, entry.outcome) for entry in world.status.history] == [
        ("v1", "replaced"),
        ("v2", "rolledBack"),
        ("v1", "serving"),
    ]
    before = world.status
    step = world.command("rollback")
    assert step.status.operation is not None
    assert step.status.operation.result == "refused: an earlier known-good version is not in this model's history"
    assert step.status.model_copy(update={"operation": None}) == before.model_copy(update={"operation": None})


def test_rollback_without_a_version_mid_release_aborts_it() -> None:
    world = mid_canary()
    step = world.command("rollback")
    assert step.status.phase == "RolledBack"
    assert step.status.challenger is None
    assert step.status.rolled_back is not None
    assert step.status.rolled_back.version == "v2"


def test_rollback_to_a_version_mid_release_remembers_the_aborted_challenger() -> None:
    world = promoted()
    world.serve("v3")
    world.become_ready("v3")
    step = world.command("rollback", "v1")
    assert step.status.challenger is not None
    assert step.status.challenger.version == "v1"
    assert step.status.rolled_back is not None
    assert step.status.rolled_back.version == "v3"
    step = world.become_ready("v1")
    assert step.status.incumbent is not None
    assert step.status.incumbent.version == "v1"
    assert step.status.rolled_back is not None
    assert step.status.rolled_back.version == "v3"
    assert _holding(step.status) == {"Stalled": "RolledBack"}


# --- pause and resume ----------------------------------------------------------------------------------------


def test_while_paused_a_new_spec_model_waits_for_resume() -> None:
    world = stable()
    world.command("pause")
    assert world.status.paused
    assert _condition(world.status, "Ready").message == "v1 serves all traffic (paused)"
    step = world.serve("v2")
    assert step.decisions == ()
    assert step.status.challenger is None
    assert _holding(step.status) == {"Reconciling": "Paused"}
    assert _condition(step.status, "Reconciling").message == "paused: v2 waits for `kubectl steward resume`"
    step = world.command("resume")
    assert not step.status.paused
    assert _reasons(step) == ["Resumed", "ReleaseStarted"]
    assert step.status.challenger is not None
    assert step.status.challenger.version == "v2"


def test_pausing_twice_is_refused() -> None:
    world = stable()
    world.command("pause")
    step = world.command("pause")
    assert step.status.operation is not None
    assert step.status.operation.result == "refused: already paused"
    assert step.status.paused


def test_manual_commands_still_work_while_paused() -> None:
    world = mid_canary()
    world.command("pause")
    step = world.command("promote")
    assert step.status.canary_step == 2
    assert step.status.weights == _weights(50, 50, 0)


def test_while_paused_a_new_spec_model_does_not_restart_a_release_in_progress() -> None:
    world = mid_canary()
    world.command("pause")
    step = world.serve("v3")
    assert step.status.challenger is not None
    assert step.status.challenger.version == "v2"
    assert step.decisions == ()


# --- streaming -----------------------------------------------------------------------------------------------


def test_a_streaming_deployment_is_stalled_and_its_commands_are_refused() -> None:
    wanted = specs.Operation(action="promote", requested_at=T0)
    world = World("streaming.yaml", ready={"v1"}, status=specs.ModelDeploymentStatus(operation=wanted), generation=2)
    step = world.reconcile()
    status = step.status
    refusal = "streaming serving is not supported yet"
    assert step.decisions == (Decision("CommandRefused", f"promote: {refusal}", True),)
    assert _holding(status) == {"Stalled": "StreamingNotSupported"}
    assert _condition(status, "Stalled").message == refusal
    assert {condition.observed_generation for condition in status.conditions} == {2}
    handled = wanted.model_copy(update={"handled_at": world.now, "result": f"refused: {refusal}"})
    assert status.model_copy(update={"conditions": []}) == specs.ModelDeploymentStatus(
        operation=handled, observed_generation=2
    )


# --- stall ---------------------------------------------------------------------------------------------------


def test_a_stall_is_told_once_and_keeps_the_step() -> None:
    world = stable()
    step = world.serve("v2")
    stalled = stall(
        world.spec, step, world.observed, "KindNotInstalled", "HTTPRoute is not installed", before=step.status
    )
    assert _holding(stalled.status) == {"Stalled": "KindNotInstalled"}
    assert stalled.decisions == (*step.decisions, Decision("KindNotInstalled", "HTTPRoute is not installed", True))
    assert stalled.status.challenger == step.status.challenger
    again = stall(
        world.spec,
        Step(stalled.status),
        world.observed,
        "KindNotInstalled",
        "HTTPRoute is not installed",
        before=stalled.status,
    )
    assert again.decisions == ()


def test_a_stall_met_again_on_the_next_reconcile_is_not_told_again_and_keeps_its_time() -> None:
    """Each reconcile advances first (which clears Stalled) and then meets the same refusal: one Event in all."""
    world = stable()
    served = world.serve("v2")
    first = stall(
        world.spec, served, world.observed, "KindNotInstalled", "HTTPRoute is not installed", before=served.status
    )
    world.status = first.status
    world.now += timedelta(minutes=5)
    step = advance(world.spec, world.status, world.observed)
    again = stall(
        world.spec, step, world.observed, "KindNotInstalled", "HTTPRoute is not installed", before=world.status
    )
    assert "KindNotInstalled" not in {decision.reason for decision in again.decisions}
    since = _condition(first.status, "Stalled").last_transition_time
    assert _condition(again.status, "Stalled").last_transition_time == since
    assert _holding(again.status) == {"Stalled": "KindNotInstalled"}


# --- readiness and identity of the challenger ----------------------------------------------------------------


def test_a_challenger_that_stops_being_ready_loses_its_traffic_at_once_and_gets_it_back_when_ready() -> None:
    """A gateway's errors for a dead backend reach no guardrail: its clients are moved off it instead."""
    world = mid_canary()
    world.ready.discard("v2")
    step = world.wait()
    assert step.status.weights == ALL_TO_INCUMBENT
    assert step.decisions == (
        Decision("ChallengerUnavailable", "v2 is not ready: its traffic is back on the incumbent until it is", True),
    )
    assert (step.status.phase, step.status.canary_step) == ("Canary", 1)
    assert "waiting for v2 to become ready before traffic moves" in _condition(step.status, "Reconciling").message
    assert "rolled back if it is not ready within 10m" in _condition(step.status, "Reconciling").message
    withdrawn = step.status.stage_started
    assert withdrawn == world.now

    step = world.become_ready("v2")
    assert step.status.weights == _weights(75, 25, 0)
    # The step's evidence counts again from when the split was back in force.
    assert step.status.stage_started == world.now != withdrawn


def test_a_challenger_still_answering_while_a_change_rolls_out_keeps_its_traffic() -> None:
    """KServe's own canary changes the InferenceService itself: its Ready condition lags the new generation for
    a moment, while the pods that answer are still there."""
    world = mid_canary()
    rolling = Observed(world.generation, world.now, frozenset({"v1"}), answering=frozenset({"v1", "v2"}))
    step = advance(world.spec, world.status, rolling)
    assert step.status.weights == _weights(75, 25, 0)
    assert "ChallengerUnavailable" not in _reasons(step)


def test_a_challenger_not_ready_again_within_the_progress_deadline_is_rolled_back() -> None:
    world = mid_canary()
    world.ready.discard("v2")
    world.wait()
    step = world.wait(timedelta(minutes=9))
    assert step.status.phase == "Canary"
    step = world.wait(timedelta(minutes=1))
    assert step.status.phase == "RolledBack"
    assert step.status.challenger is None
    assert step.status.weights == ALL_TO_INCUMBENT
    assert step.decisions == (
        Decision("RolledBack", "v2 rolled back: it was not ready within rollout.progressDeadline (10m)", True),
    )
    assert step.status.history[-1].outcome == "rolledBack"


def test_a_shadow_that_stops_being_ready_loses_its_mirror() -> None:
    world = stable("full.yaml")
    world.serve("v2")
    world.command("promote")
    world.become_ready("v2")
    assert world.status.weights == _weights(100, 0, 25)
    world.ready.discard("v2")
    step = world.wait()
    assert step.status.weights == ALL_TO_INCUMBENT
    assert _reasons(step) == ["ChallengerUnavailable"]


D1, D2, D3 = ("sha256:" + digit * 64 for digit in "123")


def test_an_incumbent_is_pinned_to_the_bundle_its_predictors_report() -> None:
    world = stable()
    assert world.status.incumbent is not None
    assert world.status.incumbent.digest is None
    world.digests = {"v1": frozenset({D1})}
    step = world.wait()
    assert step.status.incumbent is not None
    assert step.status.incumbent.digest == D1
    assert step.status.history[-1].digest == D1
    assert step.decisions == (
        Decision(
            "DigestPinned", f"v1 is pinned to bundle {D1}: every replica started from now on must load exactly it"
        ),
    )
    assert world.wait().decisions == ()


def test_a_challenger_is_pinned_to_what_it_was_validated_with_for_the_rest_of_its_life() -> None:
    world = stable()
    world.digests = {"v1": frozenset({D1}), "v2": frozenset({D2})}
    world.serve("v2")
    world.wait()  # Its predictors report while it is validated.
    assert world.status.challenger is not None
    assert world.status.challenger.digest == D2
    world.become_ready("v2")
    world.command("promoteFull")
    assert world.status.incumbent is not None
    assert world.status.incumbent.digest == D2
    assert [(entry.version, entry.digest) for entry in world.status.history] == [("v1", D1), ("v2", D2)]
    # Rolled back to, v1 comes back with the bundle it served with, whatever is at its URI now.
    world.digests = {"v1": frozenset({D3})}
    world.command("rollback")
    assert world.status.incumbent is not None
    assert (world.status.incumbent.version, world.status.incumbent.digest) == ("v1", D1)


def test_a_challenger_whose_replicas_loaded_different_bundles_is_rolled_back() -> None:
    world = stable()
    world.serve("v2")
    world.digests = {"v2": frozenset({D2, D3})}
    step = world.wait()
    assert step.status.phase == "RolledBack"
    assert step.status.challenger is None
    (decision,) = step.decisions
    assert decision.reason == "RolledBack"
    assert f"its replicas loaded different bundles ({D2}, {D3})" in decision.message


def test_a_digest_pinned_by_spec_is_never_replaced() -> None:
    world = stable()
    world.spec = world.spec.model_copy(update={"model": _model("online.yaml", "v2", D2)})
    world.generation += 1
    world.digests = {"v2": frozenset({D3})}
    step = world.wait()
    assert step.status.challenger is not None
    assert step.status.challenger.digest == D2


VERSION_REUSED = (
    "spec.model names version v1 with another bundle or digest than the one that serves under that version;"
    " give the new bundle a new version"
)


def test_a_new_bundle_under_the_serving_version_stalls_and_moves_no_traffic() -> None:
    world = stable(validation={"enabled": False})
    before = world.status
    rebuilt = specs.ModelRef(version="v1", bundle="s3://models/online/v1-rebuilt/")
    world.spec = world.spec.model_copy(update={"model": rebuilt})
    step = world.wait()
    assert step.decisions == ()
    assert step.status.challenger is None
    assert step.status.incumbent == before.incumbent
    assert step.status.weights == ALL_TO_INCUMBENT
    assert _holding(step.status) == {"Stalled": "VersionReused"}
    assert _condition(step.status, "Stalled").message == VERSION_REUSED
    assert world.command("promoteFull").status.incumbent == before.incumbent


def test_a_new_digest_under_the_serving_version_stalls() -> None:
    world = World(ready={"v1"})
    world.spec = world.spec.model_copy(update={"model": _model("online.yaml", "v1", "sha256:" + "a" * 64)})
    before = world.reconcile().status
    world.spec = world.spec.model_copy(update={"model": _model("online.yaml", "v1", "sha256:" + "b" * 64)})
    step = world.wait()
    assert step.decisions == ()
    assert step.status.challenger is None
    assert step.status.incumbent == before.incumbent
    assert _holding(step.status) == {"Stalled": "VersionReused"}


def test_a_new_bundle_under_the_challengers_version_stalls_the_release_where_it_is() -> None:
    world = mid_canary()
    before = world.status
    rebuilt = specs.ModelRef(version="v2", bundle="s3://models/online/v2-rebuilt/")
    world.spec = world.spec.model_copy(update={"model": rebuilt})
    step = world.wait()
    assert step.decisions == ()
    assert step.status.challenger == before.challenger
    assert step.status.weights == before.weights == _weights(75, 25, 0)
    assert _holding(step.status) == {"Stalled": "VersionReused"}
    assert _condition(step.status, "Stalled").message == VERSION_REUSED.replace("v1", "v2")


# --- automatic decisions ------------------------------------------------------------------------------------


def _counts(requests: int, errors: int = 0) -> ArmCounts:
    latency = {0.1: requests, math.inf: requests}
    return ArmCounts(requests=requests, errors=errors, timed=requests, latency=latency, predictions={"yes": requests})


def _live(world: World, incumbent: ArmCounts, challenger: ArmCounts) -> Evidence:
    """The window the operator would read for the world's current stage."""
    status = world.status
    assert status.challenger is not None
    stage = Stage(status.phase or "Validating", status.canary_step)
    window = deciding.Window(incumbent, challenger)
    return Evidence(status.challenger.version, stage, status.stage_started, window=window)


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
    assert (step.status.phase, step.status.weights) == ("Shadowing", _weights(100, 0, 25))
    assert _reasons(step) == ["Advanced", "TrafficShifted"]
    assert "not worse than the incumbent's 50" in step.decisions[0].message
    assert step.status.last_analysis is not None
    assert (step.status.last_analysis.phase, step.status.last_analysis.decision) == ("Validating", "advance")

    walked = []
    while world.status.phase != "Promoted":
        # Evidence is read from when the stage's split took effect, so each stage collects its own.
        assert world.status.stage_started == world.now
        world.evidence = _live(world, _counts(40_000, 40), _counts(40_000, 40))
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
    world.evidence = _live(world, _counts(500), _counts(100))
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
    world.evidence = _live(world, _counts(20_000, 20), _counts(1_000, 100))
    step = world.wait()
    status = step.status
    assert (status.phase, status.challenger, status.weights) == ("RolledBack", None, ALL_TO_INCUMBENT)
    (decision,) = step.decisions
    assert (decision.reason, decision.warning) == ("RolledBack", True)
    assert decision.message.startswith("v2 rolled back: guardrail errorRate failed in canary step 1 of 4")
    assert status.rolled_back is not None
    assert status.rolled_back.version == "v2"
    assert [(entry.version, entry.outcome) for entry in status.history] == [("v1", "serving"), ("v2", "rolledBack")]
    assert _holding(status) == {"Stalled": "RolledBack"}
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
    assert "automatic decisions wait: metrics are unavailable" in _condition(step.status, "Reconciling").message
    # Past the maximum duration, too: an outage neither promotes nor rolls back.
    step = world.wait(timedelta(days=2))
    assert (step.status.phase, step.decisions) == ("Shadowing", ())
    # Metrics back: the verdict is taken on them (here, past the maximum duration, the incumbent stays).
    world.evidence = _live(world, _counts(40_000), _counts(40_000))
    assert world.wait().status.phase == "RolledBack"


@pytest.mark.parametrize(
    "case", ["another stage", "another challenger", "an earlier split", "paused", "traffic not moved"]
)
def test_evidence_that_is_not_this_stages_decides_nothing(case: str) -> None:
    world = releasing_automatically()
    world.command("promote")
    world.evidence = _live(world, _counts(40_000, 40), _counts(40_000, 4_000))  # Credibly worse.
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
        world.evidence = _live(world, _counts(40_000, 40), _counts(40_000, 4_000))
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
    world.evidence = _live(world, _counts(40_000), _counts(40_000))
    step = world.become_ready("v2")  # The split takes effect in this very step; the reading predates it.
    assert step.status.weights == _weights(100, 0, 100)
    assert step.status.stage_started == world.now
    assert step.status.last_analysis is None


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
    return _live(world, _counts(40_000, 40), _counts(40_000, errors))


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
        assert not {"ReleaseStarted"} & set(_reasons(step)), "a release started while paused"
    # What the operator writes is what the API server accepts and gives back.
    written = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert specs.ModelDeploymentStatus.model_validate(written) == status


@pytest.mark.parametrize("example", ["online.yaml", "full.yaml", "batch.yaml"])
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
