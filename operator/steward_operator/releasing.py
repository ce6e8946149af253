"""The release machinery, as a pure function: from a ModelDeployment's spec, its status and what is observed,
the next status and the decisions taken on the way.

A release walks through stages (Validating, Shadowing, the canary steps) to Promoted; the decision engine's
verdict on each stage's evidence moves it on automatically (or back), and a manual command can at any time.
Every write the operator makes follows from the status this returns,
so an operator that restarts at any point recomputes the same next step from what status recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from steward_operator import deciding, modes, recording, specs
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
    window: deciding.Window | None = None
    """Live counts since the stage began (Shadowing, Canary)."""
    holdouts: deciding.Holdouts | None = None
    """Both versions' held-out results (Validating)."""


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
class _Draft:
    spec: specs.ModelDeploymentSpec
    status: specs.ModelDeploymentStatus
    observed: Observed
    decisions: tuple[Decision, ...] = ()

    def with_status(self, *decisions: Decision, **changes: object) -> _Draft:
        return replace(self, status=self.status.model_copy(update=changes), decisions=(*self.decisions, *decisions))


def advance(spec: specs.ModelDeploymentSpec, status: specs.ModelDeploymentStatus, observed: Observed) -> Step:
    """The next status. Applying it to its own result again changes nothing until the world changes."""
    steps: tuple[Callable[[_Draft], _Draft], ...] = (
        _adopt,
        _carry_out_operation,
        _finish_switch,
        _follow_spec,
        _pin,
        _judge,
        _move_traffic,
        _first_ready,
        _conditions,
    )
    if modes.mode(spec.serving.mode) is None:
        steps = (_carry_out_operation, _conditions)  # Commands are answered, and the Stalled condition says why.
    draft = _Draft(spec, status, observed)
    # One step can enable another (a switch back to a version already ready completes at once): go round
    # until nothing moves, so a second call with the same world is a no-op.
    for _ in range(4):
        before = draft.status
        for step in steps:
            draft = _restamped(draft, step(draft))
        if draft.status == before:
            break
    return Step(draft.status.model_copy(update={"observed_generation": observed.generation}), draft.decisions)


def _restamped(before: _Draft, after: _Draft) -> _Draft:
    """`after`, with stage_started set to now when a step changed the stage or its traffic split: a stage's
    evidence counts from when its split took effect."""
    old, new = before.status, after.status
    if new.phase not in RELEASE_PHASES:
        started = None
    elif (new.phase, new.canary_step, new.weights) != (old.phase, old.canary_step, old.weights):
        started = after.observed.now
    else:
        started = new.stage_started or after.observed.now
    return after if started == new.stage_started else after.with_status(stage_started=started)


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


# --- the steps, in the order advance() takes them -----------------------------------------------------------


def _adopt(draft: _Draft) -> _Draft:
    """A new ModelDeployment: spec.model becomes the incumbent, with all traffic."""
    if draft.status.incumbent is not None:
        return draft
    now = draft.observed.now
    model = draft.spec.model
    entry = specs.HistoryEntry(version=model.version, bundle=model.bundle, digest=model.digest, started=now)
    return draft.with_status(
        Decision("Deploying", f"serving {model.version} from {model.bundle}"),
        phase="Pending",
        incumbent=served(model, now),
        weights=ALL_TO_INCUMBENT,
        history=[entry],
    )


def _carry_out_operation(draft: _Draft) -> _Draft:
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
    handlers: dict[str, Callable[[_Draft, specs.Operation], _Draft | str]] = {
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


def _follow_spec(draft: _Draft) -> _Draft:
    """spec.model names the version Git wants; start, restart or cancel a release to get there."""
    spec, status = draft.spec, draft.status
    model = spec.model
    switching = status.phase == "RolledBack" and status.challenger is not None
    waiting = (
        same_model(status.challenger, model)
        # Stalled: a version names one bundle for good.
        or _version_reused(spec, status)
        # A manual switch back is under way; Git still names what it leaves.
        or (switching and (same_model(status.incumbent, model) or same_model(status.rolled_back, model)))
    )
    if waiting:
        return draft
    if same_model(status.incumbent, model):
        if status.challenger is None:
            return draft.with_status(rolled_back=None) if status.rolled_back else draft
        return draft.with_status(
            Decision("ReleaseCancelled", f"spec.model is {model.version} again: the release is called off"),
            phase="Stable",
            challenger=None,
            canary_step=None,
            weights=ALL_TO_INCUMBENT,
        )
    if same_model(status.rolled_back, model):
        return draft  # Stalled until `kubectl steward retry` or another version.
    return _release(draft)


def _release(draft: _Draft) -> _Draft:
    """A version new to this deployment: switch straight back to it if it is known-good, else release it."""
    spec, status, now = draft.spec, draft.status, draft.observed.now
    model = spec.model
    known_good = _known_good(spec, status, now)
    if known_good is not None:
        return draft.with_status(
            Decision("RollingBack", f"{model.version} is known-good: it takes over at once, without a release"),
            phase="RolledBack",
            challenger=served(known_good, now),
            canary_step=None,
            weights=ALL_TO_INCUMBENT,
            rolled_back=None,
        )
    if status.paused:
        return draft
    first = stages(spec)[0]
    verb = "ReleaseRestarted" if status.challenger is not None else "ReleaseStarted"
    return draft.with_status(
        Decision(verb, f"releasing {model.version}: {_describe(spec, first)} first"),
        challenger=served(model, now),
        rolled_back=None,
        weights=ALL_TO_INCUMBENT,
        **_stage_fields(first),
    )


def _pin(draft: _Draft) -> _Draft:
    """A version not pinned by spec is pinned to the bundle its predictors report, the first time they all report
    the same one: a replica started later must load exactly that bundle, and a rollback to the version gets it
    too. A challenger whose replicas loaded different bundles (its URI was written to meanwhile) is rolled back."""
    status, digests = draft.status, draft.observed.digests
    challenger, incumbent = status.challenger, status.incumbent
    if challenger is not None and challenger.digest is None and status.phase in RELEASE_PHASES:
        found = digests.get(challenger.version, frozenset())
        if len(found) > 1:
            rolled = _roll_back(draft, "rolledBack")
            message = (
                f"{challenger.version} rolled back: its replicas loaded different bundles ({', '.join(sorted(found))});"
                f" {challenger.bundle} changed after it was released"
            )
            return rolled.with_status(Decision("RolledBack", message, warning=True))
        if len(found) == 1:
            (digest,) = found
            pinned = challenger.model_copy(update={"digest": digest})
            draft = draft.with_status(Decision("DigestPinned", _pinned(challenger.version, digest)), challenger=pinned)
    if incumbent is not None and incumbent.digest is None and len(digests.get(incumbent.version, ())) == 1:
        (digest,) = digests[incumbent.version]
        history = [
            entry.model_copy(update={"digest": digest})
            if entry.version == incumbent.version and entry.ended is None
            else entry
            for entry in status.history
        ]
        pinned = incumbent.model_copy(update={"digest": digest})
        draft = draft.with_status(
            Decision("DigestPinned", _pinned(incumbent.version, digest)), incumbent=pinned, history=history
        )
    return draft


def _pinned(version: str, digest: str) -> str:
    return f"{version} is pinned to bundle {digest}: every replica started from now on must load exactly it"


def _judge(draft: _Draft) -> _Draft:
    """The decision engine's verdict on the current stage's evidence, carried out: advance, promote or roll back;
    or just recorded (continue, hold, and pause while the metrics cannot be read)."""
    verdict = _verdict(draft)
    if verdict is None:
        return draft
    status, now = draft.status, draft.observed.now
    phase = status.phase or "Validating"
    judged = draft.with_status(last_analysis=verdict.analysis(now, phase))
    if verdict.decision in {"advance", "promote"}:
        moved = _next_stage(judged, full=verdict.decision == "promote")
        if isinstance(moved, str):
            return judged  # Not ready to take all traffic: the same verdict comes again once it is.
        return _retold(moved, len(judged.decisions), verdict.rule)
    if verdict.decision == "rollback" and status.challenger is not None:
        rolled = _roll_back(judged, "rolledBack")
        return rolled.with_status(
            Decision("RolledBack", f"{status.challenger.version} rolled back: {verdict.rule}", warning=True)
        )
    before = status.last_analysis
    if verdict.decision == "pause" and (before is None or before.decision != "pause" or before.phase != phase):
        return judged.with_status(Decision("AnalysisPaused", verdict.rule, warning=True))
    return judged


def _verdict(draft: _Draft) -> deciding.Verdict | None:
    """The verdict on the evidence observed, if it is this stage's: gathered for this challenger and stage, once
    traffic follows the stage, and not while paused."""
    spec, status, evidence, now = draft.spec, draft.status, draft.observed.evidence, draft.observed.now
    challenger = status.challenger
    if evidence is None or status.paused or challenger is None or status.phase not in RELEASE_PHASES:
        return None
    here = Stage(status.phase or "Validating", status.canary_step)
    if (evidence.version, evidence.stage, evidence.since) != (challenger.version, here, status.stage_started):
        return None
    if status.weights != target_weights(spec, status):
        return None
    return deciding.decide(
        modes.policy(spec),
        deciding.Timing(challenger.since or now, status.stage_started or now, now),
        phase=here.phase,
        step=here.step,
        window=evidence.window,
        holdouts=evidence.holdouts,
    )


def _retold(draft: _Draft, since: int, why: str) -> _Draft:
    """`draft` with the decisions made after the first `since` told together with the rule that made them."""
    told = tuple(replace(decision, message=f"{decision.message}: {why}") for decision in draft.decisions[since:])
    return replace(draft, decisions=(*draft.decisions[:since], *told))


def _move_traffic(draft: _Draft) -> _Draft:
    """Traffic follows the stage, but never reaches a challenger that is not ready. One that stops being ready
    loses its share and its mirror at once (its clients are moved rather than answered 502s by the gateway), and
    one not ready within rollout.progressDeadline of its stage's split is rolled back: a version that stops
    answering counts against itself."""
    status, now = draft.status, draft.observed.now
    target = target_weights(draft.spec, status)
    if target.shadow and draft.observed.mirroring_refused is not None:
        target = target.model_copy(update={"shadow": 0})  # The shadow stage holds without its mirror.
    current = status.weights or ALL_TO_INCUMBENT
    challenger = status.challenger
    answering = challenger is not None and challenger.version in draft.observed.serving
    if challenger is not None and not answering and (current.challenger or current.shadow):
        message = f"{challenger.version} is not ready: its traffic is back on the incumbent until it is"
        return draft.with_status(Decision("ChallengerUnavailable", message, warning=True), weights=ALL_TO_INCUMBENT)
    ready = challenger is not None and challenger.version in draft.observed.ready
    if challenger is not None and not ready and status.phase in {"Shadowing", "Canary"} and target != current:
        deadline = draft.spec.rollout.progress_deadline
        if status.stage_started is not None and now - status.stage_started >= specs.as_timedelta(deadline):
            rolled = _roll_back(draft, "rolledBack")
            message = f"{challenger.version} rolled back: it was not ready within rollout.progressDeadline ({deadline})"
            return rolled.with_status(Decision("RolledBack", message, warning=True))
    if target == current:
        return draft
    if (target.challenger or target.shadow) and not ready:
        return draft
    message = f"incumbent {target.incumbent}%, challenger {target.challenger}%, shadow {target.shadow}%"
    return draft.with_status(Decision("TrafficShifted", message), weights=target)


def _finish_switch(draft: _Draft) -> _Draft:
    """A switch back to a known-good version completes once that version is ready."""
    status = draft.status
    if status.phase != "RolledBack" or status.challenger is None:
        return draft
    if status.challenger.version not in draft.observed.ready:
        return draft
    # What was left behind is not released again by itself: the aborted challenger, or else the old incumbent.
    left = status.rolled_back or status.incumbent
    switched = _take_over(draft, "rolledBack")
    return switched.with_status(
        Decision("RolledBack", f"{status.challenger.version} serves all traffic again"), rolled_back=left
    )


def _first_ready(draft: _Draft) -> _Draft:
    """A new deployment's first version is serving once it is ready."""
    status = draft.status
    if status.phase == "Pending" and status.incumbent is not None and status.incumbent.version in draft.observed.ready:
        return draft.with_status(Decision("Ready", f"{status.incumbent.version} is serving"), phase="Stable")
    return draft


def _conditions(draft: _Draft) -> _Draft:
    """Ready, Reconciling and Stalled, as kstatus reads them (Argo CD and Flux judge health from these)."""
    spec, status = draft.spec, draft.status
    if modes.mode(spec.serving.mode) is None:
        found = recording.kstatus(False, False, True, *modes.unsupported(spec.serving.mode))
    elif _version_reused(spec, status):
        message = (
            f"spec.model names version {spec.model.version} with another bundle or digest than the one that"
            " serves under that version; give the new bundle a new version"
        )
        found = recording.kstatus(False, False, True, "VersionReused", message)
    elif status.challenger is not None and status.phase == "RolledBack":
        message = f"switching back to {status.challenger.version}; it takes all traffic once it is ready"
        found = recording.kstatus(False, True, False, "RollingBack", message)
    elif status.challenger is not None:
        draft, found = _releasing(draft, status.challenger)
    elif same_model(status.rolled_back, spec.model):
        incumbent = status.incumbent.version if status.incumbent else "the incumbent"
        message = (
            f"{spec.model.version} was rolled back and {incumbent} serves; change spec.model or run"
            " `kubectl steward retry` to release it again"
        )
        found = recording.kstatus(False, False, True, "RolledBack", message)
    elif not same_model(status.incumbent, spec.model):
        found = recording.kstatus(
            False, True, False, "Paused", f"paused: {spec.model.version} waits for `kubectl steward resume`"
        )
    elif status.incumbent is None or status.incumbent.version not in draft.observed.ready:
        found = recording.kstatus(
            False, True, False, "WaitingForReady", f"waiting for {spec.model.version} to become ready"
        )
    else:
        message = f"{spec.model.version} serves all traffic"
        found = recording.kstatus(
            True, False, False, status.phase or "Stable", message + (" (paused)" if status.paused else "")
        )
    return _with_conditions(draft, found)


def _releasing(draft: _Draft, challenger: specs.ServedVersion) -> tuple[_Draft, list[recording.Found]]:
    """The conditions of a release under way: its stage and what it waits for. A shadow stage whose mirror may
    not be written where the routes attach is Stalled, and told as a Warning Event once."""
    spec, status = draft.spec, draft.status
    refused = draft.observed.mirroring_refused
    if refused is not None and status.phase == "Shadowing" and not (status.weights or ALL_TO_INCUMBENT).shadow:
        message = f"releasing {challenger.version}, held at the shadow stage: {refused.message}"
        told = {condition.type: condition for condition in status.conditions}.get("Stalled")
        if told is None or (told.status, told.reason, told.message) != ("True", refused.reason, message):
            draft = draft.with_status(Decision(refused.reason, refused.message, warning=True))
        return draft, recording.kstatus(False, False, True, refused.reason, message)
    stage = Stage(status.phase or "Validating", status.canary_step)
    message = f"releasing {challenger.version}: {_describe(spec, stage)}"
    analysis = status.last_analysis
    if status.weights != target_weights(spec, status):
        message += f"; waiting for {challenger.version} to become ready before traffic moves"
        if status.phase in {"Shadowing", "Canary"}:
            message += f" (rolled back if it is not ready within {spec.rollout.progress_deadline})"
    elif status.paused:
        message += "; paused: it waits for `kubectl steward resume` or a command"
    elif analysis is not None and analysis.decision == "pause" and analysis.phase == status.phase:
        message += f"; automatic decisions wait: {analysis.rule}"
    return draft, recording.kstatus(False, True, False, status.phase or "Releasing", message)


def stall(
    spec: specs.ModelDeploymentSpec,
    step: Step,
    observed: Observed,
    reason: str,
    message: str,
    *,
    before: specs.ModelDeploymentStatus,
) -> Step:
    """`step`, but Stalled: something only a person can fix (a missing CRD, a refused child) blocks it. `before`
    is the status this reconcile started from: a stall it already held is not told again and keeps its time,
    though `step` (advanced first) no longer shows it."""
    held = [condition for condition in before.conditions if condition.type in recording.KSTATUS]
    others = [condition for condition in step.status.conditions if condition.type not in recording.KSTATUS]
    draft = _Draft(spec, step.status.model_copy(update={"conditions": held + others}), observed, step.decisions)
    stalled = _with_conditions(draft, recording.kstatus(False, False, True, reason, message))
    already = any(
        condition.type == "Stalled" and condition.status == "True" and condition.message == message
        for condition in before.conditions
    )
    told = () if already else (Decision(reason, message, warning=True),)
    return Step(stalled.status, (*stalled.decisions, *told))


def _with_conditions(draft: _Draft, found: list[recording.Found]) -> _Draft:
    conditions = recording.with_conditions(draft.status, found, draft.observed.generation, draft.observed.now)
    return draft.with_status(conditions=conditions)


# --- the commands -------------------------------------------------------------------------------------------


def _on_promote(draft: _Draft, operation: specs.Operation) -> _Draft | str:
    if draft.status.challenger is None or draft.status.phase not in RELEASE_PHASES:
        return "no release is in progress"
    return _next_stage(draft, full=operation.action == "promoteFull")


def _next_stage(draft: _Draft, *, full: bool) -> _Draft | str:
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
            Decision("Advanced", f"{status.challenger.version}: {_describe(draft.spec, following)}"),
            **_stage_fields(following),
        )
    if status.challenger.version not in draft.observed.ready:
        return f"{status.challenger.version} is not ready yet; it cannot take all traffic"
    promoted = _take_over(draft, "replaced")
    return promoted.with_status(
        Decision("Promoted", f"{status.challenger.version} is promoted and serves all traffic"), phase="Promoted"
    )


def _on_abort(draft: _Draft, operation: specs.Operation) -> _Draft | str:
    status = draft.status
    if status.challenger is None:
        return "no release is in progress"
    if status.phase == "RolledBack":
        return "a switch back to a known-good version is under way"
    aborted = _roll_back(draft, "aborted")
    return aborted.with_status(
        Decision("RolledBack", f"release of {status.challenger.version} aborted; the incumbent keeps all traffic")
    )


def _on_retry(draft: _Draft, operation: specs.Operation) -> _Draft | str:
    status = draft.status
    if status.challenger is not None and status.phase in RELEASE_PHASES:
        first = stages(draft.spec)[0]
        return draft.with_status(
            Decision("ReleaseRestarted", f"releasing {status.challenger.version} again from the start"),
            challenger=status.challenger.model_copy(update={"since": draft.observed.now}),
            last_analysis=None,
            weights=ALL_TO_INCUMBENT,
            **_stage_fields(first),
        )
    if status.rolled_back is not None and same_model(status.rolled_back, draft.spec.model):
        return draft.with_status(rolled_back=None)
    return "there is no release to retry"


def _on_pause(draft: _Draft, operation: specs.Operation) -> _Draft | str:
    pausing = operation.action == "pause"
    if draft.status.paused == pausing:
        return f"already {'paused' if pausing else 'running'}"
    decision = Decision("Paused" if pausing else "Resumed", "automatic steps " + ("halt" if pausing else "resume"))
    return draft.with_status(decision, paused=pausing)


def _on_rollback(draft: _Draft, operation: specs.Operation) -> _Draft | str:
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


# --- shared pieces ------------------------------------------------------------------------------------------


def _roll_back(draft: _Draft, outcome: Literal["rolledBack", "aborted"]) -> _Draft:
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


def _take_over(draft: _Draft, outcome: str) -> _Draft:
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


def _known_good(
    spec: specs.ModelDeploymentSpec, status: specs.ModelDeploymentStatus, now: datetime
) -> specs.HistoryEntry | None:
    """A version that served until it was replaced, no longer ago than the rollback window."""
    window = specs.as_timedelta(spec.rollout.rollback_window)
    for entry in reversed(status.history):
        recent = entry.ended is not None and now - entry.ended <= window
        if recent and entry.outcome == "replaced" and same_model(served(entry, now), spec.model):
            return entry
    return None


def _version_reused(spec: specs.ModelDeploymentSpec, status: specs.ModelDeploymentStatus) -> bool:
    """spec.model reuses the version of a serving model for a different bundle: versions name children."""
    return any(
        served is not None and served.version == spec.model.version and not same_model(served, spec.model)
        for served in (status.incumbent, status.challenger)
    )


def _stage_fields(stage: Stage) -> dict[str, object]:
    return {"phase": stage.phase, "canary_step": stage.step}


def _describe(spec: specs.ModelDeploymentSpec, stage: Stage) -> str:
    if stage.phase == "Validating":
        return "offline validation against the incumbent"
    serving = modes.mode(spec.serving.mode)
    if stage.phase == "Shadowing" and serving is not None:
        return serving.describe_shadow(spec)
    if stage.phase == "Canary" and stage.step is not None:
        steps = spec.rollout.canary.steps
        return f"canary step {stage.step + 1} of {len(steps)}, {steps[stage.step]}% of traffic"
    return stage.phase.lower()
