"""What a release is made of, shared by the release machinery (releasing.py) and the commands (commands.py): what
was observed, the evidence and decisions, the step being drafted, the stages a release passes through, and the
moves both make: on to the next stage, roll back, take over."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from steward_operator import guardrails, modes, specs, validation
from steward_operator.stages import Stage, path
from steward_operator.traffic.base import MirrorRefusal

RELEASE_PHASES = frozenset({"Validating", "Shadowing", "Canary"})
ALL_TO_INCUMBENT = specs.Weights(incumbent=100, challenger=0, shadow=0)


@dataclass(frozen=True)
class Observed:
    """What the operator saw of the world this time round."""

    generation: int
    now: datetime
    ready: frozenset[str] = frozenset()
    """Versions whose serving children are ready (an InferenceService Ready, a CronJob in place)."""
    evidence: Evidence | None = None
    """What the metrics showed of the current stage; None when none was gathered (no metric provider is
    configured, or the stage is not one the engine decides): then only commands move the release."""
    digests: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """The bundle digests the predictors of a version not pinned yet report, by version."""
    answering: frozenset[str] | None = None
    """Versions whose serving children still report Ready, if perhaps for an older generation while a change
    rolls out (KServe's own canary changes the InferenceService itself); None: exactly the ready ones."""
    mirroring_refused: MirrorRefusal | None = None
    """Why no request may be mirrored to the challenger where its routes attach (the gateway's implementation
    does not declare mirroring, or that cannot be read); None: nothing stands in the way."""

    @property
    def serving(self) -> frozenset[str]:
        """Versions that can answer the traffic they have."""
        return self.ready if self.answering is None else self.answering | self.ready


@dataclass(frozen=True)
class Evidence:
    """What the metrics showed of one stage of one release, read just before this step. Both None: the metric
    provider could not be read."""

    version: str
    """The challenger it was gathered for."""
    stage: Stage
    since: datetime | None
    """The stage_started it was counted from: evidence from before the current split took effect is not this
    stage's."""
    window: guardrails.Window | None = None
    """Live counts since the stage began (Shadowing, Canary)."""
    holdouts: validation.Holdouts | None = None
    """Both versions' held-out results (Validating)."""
    failure: str | None = None
    """How the challenger failed on its own, at any stage (a batch run that could not load its bundle)."""


@dataclass(frozen=True)
class Decision:
    """One thing decided, told as a Kubernetes Event."""

    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Step:
    """The next status, and what was decided to reach it."""

    status: specs.ModelDeploymentStatus
    decisions: tuple[Decision, ...] = ()


@dataclass(frozen=True)
class Draft:
    spec: specs.ModelDeploymentSpec
    status: specs.ModelDeploymentStatus
    observed: Observed
    decisions: tuple[Decision, ...] = ()

    def with_status(self, *decisions: Decision, **changes: object) -> Draft:
        return replace(self, status=self.status.model_copy(update=changes), decisions=(*self.decisions, *decisions))


def stages(spec: specs.ModelDeploymentSpec) -> list[Stage]:
    """The stages a release of this spec passes through, ending with Promoted, as its serving mode lays them out."""
    return path(spec.rollout, modes.policy(spec).layout)


def target_weights(spec: specs.ModelDeploymentSpec, status: specs.ModelDeploymentStatus) -> specs.Weights:
    """The split a stage asks for."""
    if status.challenger is None or status.phase not in RELEASE_PHASES:
        return ALL_TO_INCUMBENT
    if status.phase == "Shadowing":
        return specs.Weights(incumbent=100, challenger=0, shadow=shadow_percent(spec))
    if status.phase == "Canary" and status.canary_step is not None:
        weight = spec.rollout.canary.steps[min(status.canary_step, len(spec.rollout.canary.steps) - 1)]
        return specs.Weights(incumbent=100 - weight, challenger=weight, shadow=0)
    return ALL_TO_INCUMBENT


def shadow_percent(spec: specs.ModelDeploymentSpec) -> int:
    """The share of requests the shadow stage mirrors to the challenger."""
    return spec.rollout.shadow.percent if spec.rollout.shadow else 100


def same_model(served: specs.ServedVersion | None, model: specs.ModelRef) -> bool:
    """Whether `served` is the version, bundle and (when pinned) digest that `model` names."""
    if served is None:
        return False
    digest_agrees = model.digest is None or served.digest in (None, model.digest)
    return served.version == model.version and served.bundle == model.bundle and digest_agrees


def served(model: specs.ModelRef | specs.ServedVersion | specs.HistoryEntry, since: datetime) -> specs.ServedVersion:
    return specs.ServedVersion(version=model.version, bundle=model.bundle, digest=model.digest, since=since)


def next_stage(draft: Draft, *, full: bool) -> Draft | str:
    """The release moved to its next stage (its last, Promoted, when `full`), or why it cannot be."""
    status = draft.status
    if status.challenger is None:
        raise ValueError("only a release has a next stage")
    path = stages(draft.spec)
    here = Stage(status.phase or "Validating", status.canary_step)
    following = path[path.index(here) + 1] if here in path else path[-1]
    if full:
        following = path[-1]
    if following.phase != "Promoted":
        return draft.with_status(
            Decision("Advanced", f"{status.challenger.version}: {describe(draft.spec, following)}"),
            **stage_fields(following),
        )
    if status.challenger.version not in draft.observed.ready:
        return f"{status.challenger.version} is not ready yet; it cannot take all traffic"
    promoted = take_over(draft, "replaced")
    return promoted.with_status(
        Decision("Promoted", f"{status.challenger.version} is promoted and serves all traffic"), phase="Promoted"
    )


def roll_back(draft: Draft, outcome: Literal["rolledBack", "aborted"]) -> Draft:
    """The release ends without the challenger; the incumbent keeps all traffic, and the history records the
    challenger's time in the release."""
    status, now = draft.status, draft.observed.now
    challenger = status.challenger
    if challenger is None:
        raise ValueError("only a release can be rolled back")
    entry = specs.HistoryEntry(
        version=challenger.version,
        bundle=challenger.bundle,
        digest=challenger.digest,
        started=challenger.since or now,
        ended=now,
        outcome=outcome,
    )
    return draft.with_status(
        phase="RolledBack",
        rolled_back=challenger.model_copy(update={"since": now}),
        challenger=None,
        canary_step=None,
        weights=ALL_TO_INCUMBENT,
        history=[*status.history, entry][-100:],
    )


def take_over(draft: Draft, outcome: str) -> Draft:
    """The challenger becomes the incumbent; the history records who served from when to when."""
    status, now = draft.status, draft.observed.now
    challenger = status.challenger
    if challenger is None:
        raise ValueError("only a challenger can take over")
    history = [
        entry.model_copy(update={"ended": now, "outcome": outcome}) if entry.ended is None else entry
        for entry in status.history
    ]
    history.append(
        specs.HistoryEntry(version=challenger.version, bundle=challenger.bundle, digest=challenger.digest, started=now)
    )
    return draft.with_status(
        incumbent=challenger.model_copy(update={"since": now}),
        challenger=None,
        canary_step=None,
        weights=ALL_TO_INCUMBENT,
        history=history[-100:],
    )


def stage_fields(stage: Stage) -> dict[str, object]:
    return {"phase": stage.phase, "canary_step": stage.step}


def describe(spec: specs.ModelDeploymentSpec, stage: Stage) -> str:
    if stage.phase == "Validating":
        return "offline validation against the incumbent"
    serving = modes.mode(spec.serving.mode)
    if stage.phase == "Shadowing" and serving is not None:
        return serving.describe_shadow(spec)
    if stage.phase == "Canary" and stage.step is not None:
        steps = spec.rollout.canary.steps
        return f"canary step {stage.step + 1} of {len(steps)}, {steps[stage.step]}% of traffic"
    return stage.phase.lower()
