"""Switching back to a known-good version: reverting spec.model to a version replaced within the rollback window
switches back without a release, and `kubectl steward rollback` returns to the previous version or one named from
history, never to one that was rolled back. Every scenario runs as the operator would, reconciling after each change
in the world, and every step is checked to be a fixed point of `advance` for an unchanged world."""

from __future__ import annotations

from datetime import timedelta

import pytest

from steward_operator import specs
from steward_operator.releases import ALL_TO_INCUMBENT, Decision
from tests.support.releases import WEEK, World, condition_of, holding, mid_canary, promoted, reasons, stable

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
    assert holding(status) == {"Reconciling": "RollingBack"}
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
    assert holding(status) == {"Ready": "RolledBack"}


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
    assert reasons(step) == ["RollingBack", "RolledBack"]
    assert status.incumbent is not None
    assert status.incumbent.version == "v1"
    assert status.challenger is None
    assert status.rolled_back is None  # spec.model names v1, which serves: nothing is left stalled
    assert status.phase == "RolledBack"
    assert holding(status) == {"Ready": "RolledBack"}


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
    assert holding(status) == {"Reconciling": "Validating"}


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
    assert holding(step.status) == {"Reconciling": "RollingBack"}
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
    assert holding(status) == {"Stalled": "RolledBack"}
    assert condition_of(status, "Stalled").message.startswith("v2 was rolled back and v1 serves")
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
    assert holding(world.status) == {"Stalled": "RolledBack"}
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
    assert holding(step.status) == {"Stalled": "RolledBack"}
