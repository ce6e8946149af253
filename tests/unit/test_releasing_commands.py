"""The release state machine under `kubectl steward` commands: each carried out or refused and marked handled once,
abort and retry, pause and resume, every command refused for a streaming deployment, and a stall told once. Every
scenario runs as the operator would, reconciling after each change in the world, and every step is checked to be a
fixed point of `advance` for an unchanged world."""

from __future__ import annotations

from datetime import timedelta

import pytest

from steward_operator import modes, specs
from steward_operator.releases import ALL_TO_INCUMBENT, Decision, Step
from steward_operator.releasing import advance, stall
from tests.support.releases import (
    T0,
    Action,
    World,
    condition_of,
    holding,
    mid_canary,
    promoted,
    reasons,
    stable,
    weights_of,
)

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
    assert reasons(step) == ["Deploying", "Paused", "Ready"]


# --- abort and retry -----------------------------------------------------------------------------------------


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
    assert holding(status) == {"Stalled": "RolledBack"}
    assert "`kubectl steward retry`" in condition_of(status, "Stalled").message
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
    assert reasons(step) == ["ReleaseStarted"]
    assert status.operation is not None
    assert status.operation.result == "done"
    assert holding(status) == {"Reconciling": "Validating"}


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
    assert holding(step.status) == {"Reconciling": "Validating"}


def test_reverting_spec_to_the_incumbent_after_an_abort_clears_the_stall() -> None:
    world = mid_canary()
    world.command("abort")
    step = world.serve("v1")
    assert step.status.rolled_back is None
    assert step.status.challenger is None
    assert step.status.weights == ALL_TO_INCUMBENT
    assert holding(step.status) == {"Ready": "RolledBack"}


# --- pause and resume ----------------------------------------------------------------------------------------


def test_while_paused_a_new_spec_model_waits_for_resume() -> None:
    world = stable()
    world.command("pause")
    assert world.status.paused
    assert condition_of(world.status, "Ready").message == "v1 serves all traffic (paused)"
    step = world.serve("v2")
    assert step.decisions == ()
    assert step.status.challenger is None
    assert holding(step.status) == {"Reconciling": "Paused"}
    assert condition_of(step.status, "Reconciling").message == "paused: v2 waits for `kubectl steward resume`"
    step = world.command("resume")
    assert not step.status.paused
    assert reasons(step) == ["Resumed", "ReleaseStarted"]
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
    assert step.status.weights == weights_of(50, 50, 0)


def test_while_paused_a_new_spec_model_does_not_restart_a_release_in_progress() -> None:
    world = mid_canary()
    world.command("pause")
    step = world.serve("v3")
    assert step.status.challenger is not None
    assert step.status.challenger.version == "v2"
    assert step.decisions == ()


# --- a mode this operator has no module for -------------------------------------------------------------------


def test_a_deployment_of_a_mode_with_no_module_is_stalled_and_its_commands_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(modes._MODES, "streaming")  # As an operator built without the streaming module.
    wanted = specs.Operation(action="promote", requested_at=T0)
    world = World("streaming.yaml", ready={"v1"}, status=specs.ModelDeploymentStatus(operation=wanted), generation=2)
    step = world.reconcile()
    status = step.status
    refusal = "streaming serving is not supported yet"
    assert step.decisions == (Decision("CommandRefused", f"promote: {refusal}", True),)
    assert holding(status) == {"Stalled": "StreamingNotSupported"}
    assert condition_of(status, "Stalled").message == refusal
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
    assert holding(stalled.status) == {"Stalled": "KindNotInstalled"}
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
    since = condition_of(first.status, "Stalled").last_transition_time
    assert condition_of(again.status, "Stalled").last_transition_time == since
    assert holding(again.status) == {"Stalled": "KindNotInstalled"}
