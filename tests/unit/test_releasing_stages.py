"""The release state machine from a new ModelDeployment to a promoted version: the first model adopted as the incumbent,
the stages a spec asks for and the traffic split of each, a release started by a new spec.model and walked to the end
with `promote`, and spec changes during a release. Every scenario runs as the operator would, reconciling after each
change in the world, and every step is checked to be a fixed point of `advance` for an unchanged world."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

from steward_operator import specs
from steward_operator.releases import ALL_TO_INCUMBENT, Decision, same_model, stages, target_weights
from steward_operator.stages import Stage
from tests.conftest import REPOSITORY
from tests.support.releases import (
    T0,
    World,
    condition_of,
    example_spec,
    holding,
    mid_canary,
    model_ref,
    promoted,
    reasons,
    stable,
    weights_of,
)

# --- a new ModelDeployment -----------------------------------------------------------------------------------


def test_a_new_deployment_adopts_its_model_as_the_incumbent_with_all_traffic() -> None:
    world = World(generation=3)
    step = world.reconcile()
    status = step.status
    assert status.phase == "Pending"
    assert status.incumbent == specs.ServedVersion(version="v1", bundle="s3://models/online/v1/", since=T0)
    assert status.challenger is None
    assert status.weights == weights_of(100, 0, 0)
    assert status.history == [specs.HistoryEntry(version="v1", bundle="s3://models/online/v1/", started=T0)]
    assert status.history[0].outcome == "serving"
    assert status.observed_generation == 3
    assert step.decisions == (Decision("Deploying", "serving v1 from s3://models/online/v1/"),)
    assert holding(status) == {"Reconciling": "WaitingForReady"}
    assert "waiting for v1 to become ready" in condition_of(status, "Reconciling").message


def test_the_incumbent_is_stable_once_its_version_is_ready() -> None:
    world = World()
    world.reconcile()
    world.ready = {"v1"}
    step = world.wait()
    assert step.status.phase == "Stable"
    assert step.decisions == (Decision("Ready", "v1 is serving"),)
    assert holding(step.status) == {"Ready": "Stable"}
    assert condition_of(step.status, "Ready").message == "v1 serves all traffic"


def test_a_version_ready_at_first_sight_is_stable_in_one_step() -> None:
    step = World(ready={"v1"}).reconcile()
    assert step.status.phase == "Stable"
    assert reasons(step) == ["Deploying", "Ready"]


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
    assert condition_of(later, "Ready").last_transition_time == ready_at
    assert condition_of(later, "Reconciling").last_transition_time == ready_at
    assert condition_of(later, "Stalled").last_transition_time == T0
    # A new reason or message under the same status is no transition.
    world.serve("v2")
    assert condition_of(world.status, "Stalled").last_transition_time == T0


def test_conditions_of_other_types_are_kept() -> None:
    world = stable()
    own = specs.Condition(type="Drifting", status="True", last_transition_time=T0, reason="Psi", message="age")
    world.status = world.status.model_copy(update={"conditions": [*world.status.conditions, own]})
    world.wait()
    assert condition_of(world.status, "Drifting") == own
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
    world.spec = world.spec.model_copy(update={"model": model_ref("online.yaml", "v1", "sha256:" + "b" * 64)})
    step = world.wait()
    assert step.status.challenger is None
    assert step.decisions == ()


def test_same_model_compares_version_bundle_and_a_pinned_digest() -> None:
    model = model_ref("online.yaml", "v1", "sha256:" + "a" * 64)
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
    found = stages(example_spec(example, **rollout))
    assert [stage.phase if stage.step is None else f"{stage.phase} {stage.step}" for stage in found] == expected


def test_a_batch_release_has_no_canary_whatever_its_steps() -> None:
    spec = example_spec("batch.yaml", canary={"steps": [5, 50]})
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
    assert target_weights(example_spec(example), status) == weights_of(*expected)


def test_without_a_challenger_the_incumbent_takes_everything() -> None:
    status = specs.ModelDeploymentStatus(phase="Canary", canary_step=1)
    assert target_weights(example_spec(), status) == ALL_TO_INCUMBENT == weights_of(100, 0, 0)


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
    assert holding(status) == {"Reconciling": first.phase}
    assert status.observed_generation == world.generation


def test_traffic_waits_for_the_challenger_to_become_ready() -> None:
    world = stable(validation={"enabled": False})
    step = world.serve("v2")
    assert (step.status.phase, step.status.canary_step) == ("Canary", 0)
    assert step.status.weights == ALL_TO_INCUMBENT
    message = condition_of(step.status, "Reconciling").message
    assert message == (
        "releasing v2: canary step 1 of 3, 5% of traffic; waiting for v2 to become ready before traffic moves"
        " (rolled back if it is not ready within 10m)"
    )
    step = world.become_ready("v2")
    assert step.status.weights == weights_of(95, 5, 0)
    assert step.decisions == (Decision("TrafficShifted", "incumbent 95%, challenger 5%, shadow 0%"),)
    assert condition_of(step.status, "Reconciling").message == "releasing v2: canary step 1 of 3, 5% of traffic"


def test_validation_takes_no_traffic_even_when_the_challenger_is_ready() -> None:
    world = stable()
    world.ready.add("v2")
    step = world.serve("v2")
    assert step.status.phase == "Validating"
    assert step.status.weights == ALL_TO_INCUMBENT
    assert condition_of(step.status, "Reconciling").message == "releasing v2: offline validation against the incumbent"


def test_a_release_can_start_before_the_incumbent_is_ready() -> None:
    world = World()
    world.reconcile()
    step = world.serve("v2")
    assert step.status.phase == "Validating"
    assert step.status.challenger is not None


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
        assert step.status.weights == weights_of(*weights)
        assert reasons(step) == ["Advanced", "TrafficShifted"]
        assert step.status.operation is not None
        assert step.status.operation.result == step.decisions[0].message
        assert holding(step.status) == {"Reconciling": phase}
    step = world.command("promote")
    status = step.status
    assert step.decisions == (Decision("Promoted", "v2 is promoted and serves all traffic"),)
    assert status.phase == "Promoted"
    assert status.canary_step is None
    assert status.challenger is None
    assert status.incumbent == specs.ServedVersion(
        version="v2", bundle=model_ref(example, "v2").bundle, since=world.now
    )
    assert status.weights == ALL_TO_INCUMBENT
    assert holding(status) == {"Ready": "Promoted"}
    assert condition_of(status, "Ready").message == "v2 serves all traffic"


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
    assert reasons(step) == ["Advanced"]
    assert condition_of(step.status, "Reconciling").message.endswith(
        "waiting for v2 to become ready before traffic moves (rolled back if it is not ready within 10m)"
    )
    step = world.become_ready("v2")
    assert step.status.weights == weights_of(100, 0, 25)


def test_the_canary_advances_while_the_challenger_is_not_ready_but_traffic_stays() -> None:
    world = stable(validation={"enabled": False})
    world.serve("v2")
    world.command("promote")
    step = world.command("promote")
    assert (step.status.phase, step.status.canary_step) == ("Canary", 2)
    assert step.status.weights == ALL_TO_INCUMBENT
    step = world.become_ready("v2")
    assert step.status.weights == weights_of(50, 50, 0)


def test_promotion_to_all_traffic_is_refused_while_the_challenger_is_not_ready() -> None:
    world = stable(validation={"enabled": False}, canary={"steps": [50]})
    world.serve("v2")
    world.become_ready("v2")
    assert world.status.weights == weights_of(50, 50, 0)
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
    assert reasons(step) == ["Promoted"]


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
    assert holding(status) == {"Ready": "Stable"}
