"""The release machinery, as a pure function: from a ModelDeployment's spec, its status and what is observed,
the next status and the decisions taken on the way.

A release walks through stages (Validating, Shadowing, the canary steps) to Promoted; the decision engine's
verdict on each stage's evidence moves it on automatically (or back), and a manual command can at any time.
Every write the operator makes follows from the status this returns,
so an operator that restarts at any point recomputes the same next step from what status recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from steward_operator import deciding, modes, recording, specs
from steward_operator.commands import carry_out_operation
from steward_operator.releases import (
    ALL_TO_INCUMBENT,
    RELEASE_PHASES,
    Decision,
    Draft,
    Observed,
    Step,
    describe,
    next_stage,
    roll_back,
    same_model,
    served,
    stage_fields,
    stages,
    take_over,
    target_weights,
)
from steward_operator.stages import Stage


def advance(spec: specs.ModelDeploymentSpec, status: specs.ModelDeploymentStatus, observed: Observed) -> Step:
    """The next status. Applying it to its own result again changes nothing until the world changes."""
    steps: tuple[Callable[[Draft], Draft], ...] = (
        _adopt,
        carry_out_operation,
        _finish_switch,
        _follow_spec,
        _pin,
        _judge,
        _move_traffic,
        _first_ready,
        _conditions,
    )
    if modes.mode(spec.serving.mode) is None:
        steps = (carry_out_operation, _conditions)  # Commands are answered, and the Stalled condition says why.
    draft = Draft(spec, status, observed)
    for step in steps:
        draft = _restamped(draft, step(draft))
    return Step(draft.status.model_copy(update={"observed_generation": observed.generation}), draft.decisions)


def _restamped(before: Draft, after: Draft) -> Draft:
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


def _adopt(draft: Draft) -> Draft:
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


def _follow_spec(draft: Draft) -> Draft:
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


def _release(draft: Draft) -> Draft:
    """A version new to this deployment: switch straight back to it if it is known-good, else release it."""
    spec, status, now = draft.spec, draft.status, draft.observed.now
    model = spec.model
    known_good = _known_good(spec, status, now)
    if known_good is not None:
        switching = draft.with_status(
            Decision("RollingBack", f"{model.version} is known-good: it takes over at once, without a release"),
            phase="RolledBack",
            challenger=served(known_good, now),
            canary_step=None,
            weights=ALL_TO_INCUMBENT,
            rolled_back=None,
        )
        return _finish_switch(switching)  # At once when it is ready still.
    if status.paused:
        return draft
    first = stages(spec)[0]
    verb = "ReleaseRestarted" if status.challenger is not None else "ReleaseStarted"
    return draft.with_status(
        Decision(verb, f"releasing {model.version}: {describe(spec, first)} first"),
        challenger=served(model, now),
        rolled_back=None,
        weights=ALL_TO_INCUMBENT,
        **stage_fields(first),
    )


def _pin(draft: Draft) -> Draft:
    """A version not pinned by spec is pinned to the bundle its predictors report, the first time they all report
    the same one: a replica started later must load exactly that bundle, and a rollback to the version gets it
    too. A challenger whose replicas loaded different bundles (its URI was written to meanwhile) is rolled back."""
    status, digests = draft.status, draft.observed.digests
    challenger, incumbent = status.challenger, status.incumbent
    if challenger is not None and challenger.digest is None and status.phase in RELEASE_PHASES:
        found = digests.get(challenger.version, frozenset())
        if len(found) > 1:
            rolled = roll_back(draft, "rolledBack")
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


def _judge(draft: Draft) -> Draft:
    """The decision engine's verdict on the current stage's evidence, carried out: advance, promote or roll back;
    or just recorded (continue, hold, and pause while the metrics cannot be read)."""
    verdict = _verdict(draft)
    if verdict is None:
        return draft
    status, now = draft.status, draft.observed.now
    phase = status.phase or "Validating"
    judged = draft.with_status(last_analysis=verdict.analysis(now, phase))
    if verdict.decision in {"advance", "promote"}:
        moved = next_stage(judged, full=verdict.decision == "promote")
        if isinstance(moved, str):
            return judged  # Not ready to take all traffic: the same verdict comes again once it is.
        return _retold(moved, len(judged.decisions), verdict.rule)
    if verdict.decision == "rollback" and status.challenger is not None:
        rolled = roll_back(judged, "rolledBack")
        return rolled.with_status(
            Decision("RolledBack", f"{status.challenger.version} rolled back: {verdict.rule}", warning=True)
        )
    before = status.last_analysis
    if verdict.decision == "pause" and (before is None or before.decision != "pause" or before.phase != phase):
        return judged.with_status(Decision("AnalysisPaused", verdict.rule, warning=True))
    return judged


def _verdict(draft: Draft) -> deciding.Verdict | None:
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
        failure=evidence.failure,
    )


def _retold(draft: Draft, since: int, why: str) -> Draft:
    """`draft` with the decisions made after the first `since` told together with the rule that made them."""
    told = tuple(replace(decision, message=f"{decision.message}: {why}") for decision in draft.decisions[since:])
    return replace(draft, decisions=(*draft.decisions[:since], *told))


def _move_traffic(draft: Draft) -> Draft:
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
            rolled = roll_back(draft, "rolledBack")
            message = f"{challenger.version} rolled back: it was not ready within rollout.progressDeadline ({deadline})"
            return rolled.with_status(Decision("RolledBack", message, warning=True))
    if target == current:
        return draft
    if (target.challenger or target.shadow) and not ready:
        return draft
    message = f"incumbent {target.incumbent}%, challenger {target.challenger}%, shadow {target.shadow}%"
    return draft.with_status(Decision("TrafficShifted", message), weights=target)


def _finish_switch(draft: Draft) -> Draft:
    """A switch back to a known-good version completes once that version is ready."""
    status = draft.status
    if status.phase != "RolledBack" or status.challenger is None:
        return draft
    if status.challenger.version not in draft.observed.ready:
        return draft
    switched = take_over(draft, "rolledBack")
    # What was left behind is not released again by itself (the aborted challenger, or else the old incumbent),
    # unless spec.model names the version switched to.
    left = None if same_model(switched.status.incumbent, draft.spec.model) else status.rolled_back or status.incumbent
    return switched.with_status(
        Decision("RolledBack", f"{status.challenger.version} serves all traffic again"), rolled_back=left
    )


def _first_ready(draft: Draft) -> Draft:
    """A new deployment's first version is serving once it is ready."""
    status = draft.status
    if status.phase == "Pending" and status.incumbent is not None and status.incumbent.version in draft.observed.ready:
        return draft.with_status(Decision("Ready", f"{status.incumbent.version} is serving"), phase="Stable")
    return draft


def _conditions(draft: Draft) -> Draft:
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


def _releasing(draft: Draft, challenger: specs.ServedVersion) -> tuple[Draft, list[recording.Found]]:
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
    message = f"releasing {challenger.version}: {describe(spec, stage)}"
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
    draft = Draft(spec, step.status.model_copy(update={"conditions": held + others}), observed, step.decisions)
    stalled = _with_conditions(draft, recording.kstatus(False, False, True, reason, message))
    already = any(
        condition.type == "Stalled" and condition.status == "True" and condition.message == message
        for condition in before.conditions
    )
    told = () if already else (Decision(reason, message, warning=True),)
    return Step(stalled.status, (*stalled.decisions, *told))


def _with_conditions(draft: Draft, found: list[recording.Found]) -> Draft:
    conditions = recording.with_conditions(draft.status, found, draft.observed.generation, draft.observed.now)
    return draft.with_status(conditions=conditions)


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
