"""How status records what happened, written once for the release machinery and retraining alike: conditions
whose transition time moves only when they turn, and commands marked handled with their result."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from steward_operator import specs

KSTATUS = ("Ready", "Reconciling", "Stalled")
"""The conditions kstatus reads (and Argo CD's and Flux's health checks with it)."""


@dataclass(frozen=True)
class Found:
    """A condition as just observed: whether it holds, why, and in words a person can act on."""

    type: str
    holds: bool
    reason: str
    message: str


def with_conditions(
    status: specs.ModelDeploymentStatus, found: list[Found], generation: int | None, now: datetime
) -> list[specs.Condition]:
    """Status's conditions with `found` put in, each where it stood (a new one last), so the order never flips
    between writers: each keeps its last transition time unless it turned."""
    previous = {condition.type: condition for condition in status.conditions}
    fresh = {}
    for item in found:
        old = previous.get(item.type)
        state = "True" if item.holds else "False"
        fresh[item.type] = specs.Condition(
            type=item.type,
            status=state,
            observed_generation=generation,
            last_transition_time=old.last_transition_time if old is not None and old.status == state else now,
            reason=item.reason,
            message=item.message,
        )
    kept = [fresh.pop(condition.type, condition) for condition in status.conditions]
    return kept + list(fresh.values())


def kstatus(ready: bool, reconciling: bool, stalled: bool, reason: str, message: str) -> list[Found]:
    """The three conditions kstatus reads, each with one reason and message."""
    return [
        Found(kind, holds, reason, message) for kind, holds in zip(KSTATUS, (ready, reconciling, stalled), strict=True)
    ]


def handled(operation: specs.Operation, now: datetime, result: str) -> specs.Operation:
    """A command marked carried out (or refused, when `result` starts so), never to be carried out again."""
    return operation.model_copy(update={"handled_at": now, "result": result[:1024]})
