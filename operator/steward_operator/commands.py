"""The commands of `kubectl steward` (ModelCommands) as the release machinery carries them out: each moves the
release, or is refused with a reason, and is marked handled either way. `retrain` is retraining's to answer."""

from __future__ import annotations

from collections.abc import Callable

from steward_operator import modes, recording, specs
from steward_operator.releases import (
    ALL_TO_INCUMBENT,
    RELEASE_PHASES,
    Decision,
    Draft,
    next_stage,
    roll_back,
    same_model,
    served,
    stage_fields,
    stages,
)


def carry_out_operation(draft: Draft) -> Draft:
    """A command from `kubectl steward`, carried out or refused, and marked handled either way."""
    operation = draft.status.operation
    if operation is None or operation.handled_at is not None:
        return draft
    supported = modes.mode(draft.spec.serving.mode) is not None
    if operation.action == "retrain" and supported:
        return draft  # Not a release's business: retraining.step answers it.
    if not supported:
        _, refusal = modes.unsupported(draft.spec.serving.mode)
        refused = Decision("CommandRefused", f"{operation.action}: {refusal}", warning=True)
        return draft.with_status(
            refused, operation=recording.handled(operation, draft.observed.now, f"refused: {refusal}")
        )
    handlers: dict[str, Callable[[Draft, specs.Operation], Draft | str]] = {
        "promote": _on_promote,
        "promoteFull": _on_promote,
        "abort": _on_abort,
        "retry": _on_retry,
        "pause": _on_pause,
        "resume": _on_pause,
        "rollback": _on_rollback,
    }
    outcome = handlers[operation.action](draft, operation)
    if isinstance(outcome, str):
        refused = Decision("CommandRefused", f"{operation.action}: {outcome}", warning=True)
        return draft.with_status(
            refused, operation=recording.handled(operation, draft.observed.now, f"refused: {outcome}")
        )
    result = outcome.decisions[-1].message if len(outcome.decisions) > len(draft.decisions) else "done"
    return outcome.with_status(operation=recording.handled(operation, draft.observed.now, result))


def _on_promote(draft: Draft, operation: specs.Operation) -> Draft | str:
    if draft.status.challenger is None or draft.status.phase not in RELEASE_PHASES:
        return "no release is in progress"
    return next_stage(draft, full=operation.action == "promoteFull")


def _on_abort(draft: Draft, operation: specs.Operation) -> Draft | str:
    status = draft.status
    if status.challenger is None:
        return "no release is in progress"
    if status.phase == "RolledBack":
        return "a switch back to a known-good version is under way"
    aborted = roll_back(draft, "aborted")
    return aborted.with_status(
        Decision("RolledBack", f"release of {status.challenger.version} aborted; the incumbent keeps all traffic")
    )


def _on_retry(draft: Draft, operation: specs.Operation) -> Draft | str:
    status = draft.status
    if status.challenger is not None and status.phase in RELEASE_PHASES:
        first = stages(draft.spec)[0]
        return draft.with_status(
            Decision("ReleaseRestarted", f"releasing {status.challenger.version} again from the start"),
            challenger=status.challenger.model_copy(update={"since": draft.observed.now}),
            last_analysis=None,
            weights=ALL_TO_INCUMBENT,
            **stage_fields(first),
        )
    if status.rolled_back is not None and same_model(status.rolled_back, draft.spec.model):
        return draft.with_status(rolled_back=None)
    return "there is no release to retry"


def _on_pause(draft: Draft, operation: specs.Operation) -> Draft | str:
    pausing = operation.action == "pause"
    if draft.status.paused == pausing:
        return f"already {'paused' if pausing else 'running'}"
    decision = Decision("Paused" if pausing else "Resumed", "automatic steps " + ("halt" if pausing else "resume"))
    return draft.with_status(decision, paused=pausing)


def _on_rollback(draft: Draft, operation: specs.Operation) -> Draft | str:
    status = draft.status
    if status.challenger is not None and status.phase in RELEASE_PHASES and operation.to_version is None:
        return _on_abort(draft, operation)
    incumbent = status.incumbent.version if status.incumbent else None
    if operation.to_version is not None and operation.to_version == incumbent:
        return f"{incumbent} already serves"
    earlier = [
        entry
        for entry in reversed(status.history)
        if entry.version != incumbent and entry.outcome != "serving"
        # Without --to, never back to a version that was itself rolled back.
        if entry.version == operation.to_version or (operation.to_version is None and entry.outcome == "replaced")
    ]
    if not earlier:
        wanted = operation.to_version or "an earlier known-good version"
        return f"{wanted} is not in this model's history"
    target = earlier[0]
    # What must not be released again by itself: the release this aborts, or what was already rolled back.
    aborted = status.challenger if status.phase in RELEASE_PHASES else status.rolled_back
    return draft.with_status(
        Decision("RollingBack", f"switching back to {target.version}; it takes all traffic once it is ready"),
        rolled_back=aborted,
        phase="RolledBack",
        challenger=served(target, draft.observed.now),
        canary_step=None,
        weights=ALL_TO_INCUMBENT,
    )
