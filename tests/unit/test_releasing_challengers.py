"""The challenger's readiness and identity in the release state machine: traffic leaves a challenger that stops being
ready and comes back when it is, one not ready again within the progress deadline is rolled back, each version is
pinned to the bundle its predictors report, and a new bundle under a version already in a release stalls it. Every
scenario runs as the operator would, reconciling after each change in the world, and every step is checked to be a
fixed point of `advance` for an unchanged world."""

from __future__ import annotations

from datetime import timedelta

from steward_operator import specs
from steward_operator.releases import ALL_TO_INCUMBENT, Decision, Observed
from steward_operator.releasing import advance
from tests.support.releases import World, condition_of, holding, mid_canary, model_ref, reasons, stable, weights_of

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
    assert "waiting for v2 to become ready before traffic moves" in condition_of(step.status, "Reconciling").message
    assert "rolled back if it is not ready within 10m" in condition_of(step.status, "Reconciling").message
    withdrawn = step.status.stage_started
    assert withdrawn == world.now

    step = world.become_ready("v2")
    assert step.status.weights == weights_of(75, 25, 0)
    # The step's evidence counts again from when the split was back in force.
    assert step.status.stage_started == world.now != withdrawn


def test_a_challenger_still_answering_while_a_change_rolls_out_keeps_its_traffic() -> None:
    """KServe's own canary changes the InferenceService itself: its Ready condition lags the new generation for
    a moment, while the pods that answer are still there."""
    world = mid_canary()
    rolling = Observed(world.generation, world.now, frozenset({"v1"}), answering=frozenset({"v1", "v2"}))
    step = advance(world.spec, world.status, rolling)
    assert step.status.weights == weights_of(75, 25, 0)
    assert "ChallengerUnavailable" not in reasons(step)


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
    assert world.status.weights == weights_of(100, 0, 25)
    world.ready.discard("v2")
    step = world.wait()
    assert step.status.weights == ALL_TO_INCUMBENT
    assert reasons(step) == ["ChallengerUnavailable"]


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
    world.spec = world.spec.model_copy(update={"model": model_ref("online.yaml", "v2", D2)})
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
    assert holding(step.status) == {"Stalled": "VersionReused"}
    assert condition_of(step.status, "Stalled").message == VERSION_REUSED
    assert world.command("promoteFull").status.incumbent == before.incumbent


def test_a_new_digest_under_the_serving_version_stalls() -> None:
    world = World(ready={"v1"})
    world.spec = world.spec.model_copy(update={"model": model_ref("online.yaml", "v1", "sha256:" + "a" * 64)})
    before = world.reconcile().status
    world.spec = world.spec.model_copy(update={"model": model_ref("online.yaml", "v1", "sha256:" + "b" * 64)})
    step = world.wait()
    assert step.decisions == ()
    assert step.status.challenger is None
    assert step.status.incumbent == before.incumbent
    assert holding(step.status) == {"Stalled": "VersionReused"}


def test_a_new_bundle_under_the_challengers_version_stalls_the_release_where_it_is() -> None:
    world = mid_canary()
    before = world.status
    rebuilt = specs.ModelRef(version="v2", bundle="s3://models/online/v2-rebuilt/")
    world.spec = world.spec.model_copy(update={"model": rebuilt})
    step = world.wait()
    assert step.decisions == ()
    assert step.status.challenger == before.challenger
    assert step.status.weights == before.weights == weights_of(75, 25, 0)
    assert holding(step.status) == {"Stalled": "VersionReused"}
    assert condition_of(step.status, "Stalled").message == VERSION_REUSED.replace("v1", "v2")
