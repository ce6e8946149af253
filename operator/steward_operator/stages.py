"""The stages a release passes through, laid out once: from the rollout a spec asks for and what its serving mode
can do live, the path from Validating through Shadowing and the canary steps to Promoted. The release machinery
walks this path; the decision engine judges each stop on it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from steward_operator import specs

FULL = 100
"""A canary step at this weight leaves the incumbent no traffic to compare the challenger with."""


@dataclass(frozen=True)
class Layout:
    """What a serving mode's releases can do on live traffic: split it in canary steps, and whether a shadow stage
    is always taken (even without rollout.shadow, whose defaults then set its minimum evidence)."""

    mode: str = "online"
    canary: bool = True
    always_shadows: bool = False
    timed: bool = True
    """Whether each answer's latency is measured: a batch run's rows are not, so no latency guardrail judges it."""


ONLINE = Layout()
"""Live traffic split in canary steps, shadow only when rollout.shadow asks for it."""


@dataclass(frozen=True)
class Stage:
    """A stop on a release's way: its phase, and for the canary the step's index."""

    phase: specs.Phase
    step: int | None = None


@dataclass(frozen=True)
class LiveStage:
    """A live stage as the decision engine judges it: its name in words, the judged stage after it (None when
    promotion follows), the minimum evidence it needs, and whether it is a canary step of 100 %."""

    name: str
    following: str | None
    min_requests: int
    min_duration: timedelta
    full: bool = False
    paired: bool = False
    """Both versions answer the same requests (shadow): paired answers can be compared."""
    timed: bool = True
    """Answers are timed: latency guardrails can judge the stage."""


def path(rollout: specs.Rollout, layout: Layout) -> list[Stage]:
    """The stages a release passes through, ending with Promoted."""
    found: list[Stage] = []
    if rollout.validation.enabled:
        found.append(Stage("Validating"))
    if shadowed(rollout, layout):
        found.append(Stage("Shadowing"))
    if layout.canary:
        found.extend(Stage("Canary", index) for index in range(len(rollout.canary.steps)))
    found.append(Stage("Promoted"))
    return found


def live(rollout: specs.Rollout, layout: Layout, phase: specs.Phase, step: int | None) -> LiveStage:
    """The live stage at `phase` and `step`, with what the path puts after it. Raises ValueError for a stage the
    path has not."""
    if phase == "Shadowing":
        shadow = rollout.shadow or specs.Shadow()
        following = canary_name(rollout, 0) if layout.canary and judged_steps(rollout) else None
        duration = specs.as_timedelta(shadow.min_duration)
        return LiveStage("shadow", following, shadow.min_requests, duration, paired=True, timed=layout.timed)
    if phase == "Canary":
        if not layout.canary:
            raise ValueError(f"{layout.mode} serving has no canary")
        if step is None or step < 0:
            raise ValueError(f"a canary stage needs a step index of 0 or more, got {step}")
        canary = rollout.canary
        # A step past the end (steps shortened mid-release) is the last step, as the traffic split treats it.
        index = min(step, len(canary.steps) - 1)
        following = canary_name(rollout, index + 1) if index + 1 < judged_steps(rollout) else None
        return LiveStage(
            canary_name(rollout, index),
            following,
            canary.min_requests_per_step,
            specs.as_timedelta(canary.min_step_duration),
            full=canary.steps[index] >= FULL,
        )
    raise ValueError(f"no release decides in phase {phase}")


def shadowed(rollout: specs.Rollout, layout: Layout) -> bool:
    """Whether a release has a shadow stage: with rollout.shadow, or always where the mode asks for one."""
    return rollout.shadow is not None or layout.always_shadows


def judged_steps(rollout: specs.Rollout) -> int:
    """How many canary steps leave the incumbent traffic to compare with: those before the first of 100 %."""
    steps = rollout.canary.steps
    return next((index for index, weight in enumerate(steps) if weight >= FULL), len(steps))


def first_live(rollout: specs.Rollout, layout: Layout) -> str:
    """The first stage judged on live traffic, in words."""
    return "shadow" if shadowed(rollout, layout) else canary_name(rollout, 0)


def canary_name(rollout: specs.Rollout, index: int) -> str:
    steps = rollout.canary.steps
    return f"canary step {index + 1} of {len(steps)} ({steps[index]}%)"
