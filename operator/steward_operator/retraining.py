"""Retraining, as a pure function: from spec.retraining, status, what the metrics say of the serving version and
which retraining Jobs exist, whether to start one (and the Job), and the status that records it.

Triggers, in order: a manual request (`kubectl steward retrain`, which skips the cooldown), the serving
version's age (maxAge), sustained drift (onDrift) and a quality drop on matured outcomes (onQualityDrop). A
calendar schedule is a CronJob the planner keeps (`planners.retraining_cron_job`). Never two at once: while a
Job Steward started is running, nothing else starts, not even on request. Between automatic runs, the
cooldown holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from steward_operator import planners, recording, specs, validation
from steward_operator.children import Owner, owned
from steward_operator.evidence.base import Quality
from steward_operator.kinds import JOB
from steward_operator.releases import Decision

Reason = Literal["maxAge", "drift", "qualityDrop", "manual"]
DEFAULT_MIN_LABELS = 200


@dataclass(frozen=True)
class Job:
    """A retraining Job Steward started, as observed: how it stands, and what its annotations say."""

    state: Literal["running", "succeeded", "failed"]
    reason: Reason
    message: str
    version: str
    started: datetime


@dataclass(frozen=True)
class Signals:
    """What was observed for retraining: the serving version's drifting features and quality (None: unknown,
    the metrics could not be read), and the retraining Jobs this ModelDeployment owns, by name."""

    drifting: tuple[str, ...] | None = None
    quality: Quality | None = None
    jobs: Mapping[str, Job] = field(default_factory=dict)


@dataclass(frozen=True)
class Trigger:
    reason: Reason
    message: str


@dataclass(frozen=True)
class Outcome:
    """The next status, the Job to create (if any), and what was decided."""

    status: specs.ModelDeploymentStatus
    job: dict[str, Any] | None = None
    decisions: tuple[Decision, ...] = ()


def step(
    owner: Owner, spec: specs.ModelDeploymentSpec, status: specs.ModelDeploymentStatus, signals: Signals, now: datetime
) -> Outcome:
    """Settle the runs that ended, answer a pending `retrain` command, and start a Job when a trigger fires."""
    runs, decisions = _record_jobs(status.retrainings, signals.jobs, now)
    status = status.model_copy(update={"retrainings": runs})
    if signals.drifting is not None and status.incumbent is not None:
        status = drifting_condition(status, status.incumbent.version, signals.drifting, now)
    running = next((run for run in runs if run.outcome == "running"), None)
    operation = status.operation
    manual = operation is not None and operation.action == "retrain" and operation.handled_at is None
    trigger: Trigger | None = None
    if manual and operation is not None:
        refusal = _refusal(spec, running)
        result = f"refused: {refusal}" if refusal else "a retraining Job starts"
        status = status.model_copy(update={"operation": recording.handled(operation, now, result)})
        if refusal:
            return Outcome(status, None, (*decisions, Decision("CommandRefused", f"retrain: {refusal}", warning=True)))
        who = operation.requested_by or "someone"
        trigger = Trigger("manual", f"requested by {who} with kubectl steward retrain")
    elif spec.retraining is not None and running is None and not _cooling_down(spec.retraining, runs, now):
        trigger = _automatic(spec, status, signals, now)
    if trigger is None or spec.retraining is None or status.incumbent is None:
        return Outcome(status, None, decisions)
    job = retraining_job(owner, spec.retraining, status.incumbent.version, trigger, now)
    run = specs.RetrainingRun(
        job=job["metadata"]["name"],
        reason=trigger.reason,
        message=trigger.message[:1024],
        version=status.incumbent.version,
        started=now,
    )
    status = status.model_copy(update={"retrainings": [*runs, run][-20:]})
    told = Decision("RetrainingStarted", f"{run.job}: {trigger.message}")
    return Outcome(status, job, (*decisions, told))


def retraining_job(
    owner: Owner, retraining: specs.Retraining, version: str, trigger: Trigger, now: datetime
) -> dict[str, Any]:
    """The team's Job template, owned by the ModelDeployment, named for the moment it starts."""
    metadata, job_spec = planners.retraining_job(owner, retraining, version, trigger.reason, trigger.message)
    job = owned(owner, JOB, job_spec)
    suffix = now.strftime("%Y%m%d-%H%M%S")
    job["metadata"]["name"] = f"{owner.name[: 63 - len(suffix) - 9]}-retrain-{suffix}"
    job["metadata"]["labels"].update(metadata["labels"])
    job["metadata"]["annotations"] = metadata["annotations"]
    return job


def drifting_condition(
    status: specs.ModelDeploymentStatus, version: str, features: tuple[str, ...], now: datetime
) -> specs.ModelDeploymentStatus:
    """The Drifting condition: True while the monitor finds drift sustained in the serving version, with the
    features; its transition time moves only when it turns."""
    holds = bool(features)
    message = (
        f"sustained drift in {version}: {', '.join(features[:10])}" if holds else f"no sustained drift in {version}"
    )
    found = recording.Found("Drifting", holds, "SustainedDrift" if holds else "NoDrift", message)
    conditions = recording.with_conditions(status, [found], status.observed_generation, now)
    return status.model_copy(update={"conditions": conditions})


def quality_drop(spec: specs.ModelDeploymentSpec, quality: Quality) -> tuple[str, float] | None:
    """The metric judged and how much worse than held out it is on matured outcomes (0.1: 10 % worse); None
    until enough outcomes have matured or when no metric is known on both sides."""
    outcome = spec.monitoring.outcome
    needed = outcome.min_labels if outcome is not None else DEFAULT_MIN_LABELS
    if quality.labelled < needed:
        return None
    preferred = (
        [outcome.metric] if outcome is not None else [*validation.CLASSIFIER_METRICS, *validation.REGRESSOR_METRICS]
    )
    metric = next((name for name in preferred if name in quality.live and name in quality.held_out), None)
    if metric is None:
        return None
    live, held_out = quality.live[metric], quality.held_out[metric]
    if not (math.isfinite(live) and math.isfinite(held_out)) or held_out == 0:
        return None
    worse = held_out - live if metric in validation.HIGHER_IS_BETTER else live - held_out
    return metric, worse / abs(held_out)


# --- the pieces ----------------------------------------------------------------------------------------------


def _record_jobs(
    runs: list[specs.RetrainingRun], jobs: Mapping[str, Job], now: datetime
) -> tuple[list[specs.RetrainingRun], tuple[Decision, ...]]:
    """Runs brought up to date with their Jobs. A Job status never recorded (the operator stopped between
    creating it and writing status) is adopted from its annotations, so it is neither lost nor started twice."""
    known = {run.job for run in runs}
    adopted = [
        specs.RetrainingRun(job=name, reason=job.reason, message=job.message, version=job.version, started=job.started)
        for name, job in sorted(jobs.items(), key=lambda item: item[1].started)
        if name not in known
    ]
    settled, decisions = [], []
    for run in [*runs, *adopted][-20:]:
        # A Job that is gone cannot be followed: it counts as failed.
        state = jobs[run.job].state if run.job in jobs else "failed"
        if run.outcome == "running" and state != "running":
            verb = "succeeded" if state == "succeeded" else "failed"
            decisions.append(Decision(f"Retraining{verb.title()}", f"{run.job} {verb}", warning=state != "succeeded"))
            settled.append(run.model_copy(update={"outcome": state, "finished": now}))
        else:
            settled.append(run)
    return settled, tuple(decisions)


def _refusal(spec: specs.ModelDeploymentSpec, running: specs.RetrainingRun | None) -> str | None:
    if spec.retraining is None:
        return "spec.retraining is not set: there is no Job template to run"
    if running is not None:
        return f"retraining Job {running.job} is still running; one runs at a time"
    return None


def _cooling_down(retraining: specs.Retraining, runs: list[specs.RetrainingRun], now: datetime) -> bool:
    automatic = [run for run in runs if run.reason != "manual"]
    return bool(automatic) and now - automatic[-1].started < specs.as_timedelta(retraining.cooldown)


def _automatic(
    spec: specs.ModelDeploymentSpec, status: specs.ModelDeploymentStatus, signals: Signals, now: datetime
) -> Trigger | None:
    retraining, incumbent = spec.retraining, status.incumbent
    if retraining is None or incumbent is None:
        return None
    if retraining.max_age is not None:
        serving = next((entry for entry in reversed(status.history) if entry.outcome == "serving"), None)
        since = serving.started if serving is not None else incumbent.since
        if since is not None and now - since > specs.as_timedelta(retraining.max_age):
            served = f"{incumbent.version} has served since {since:%Y-%m-%d %H:%M} UTC"
            return Trigger("maxAge", f"{served}, longer than maxAge {retraining.max_age}")
    if retraining.on_drift and signals.drifting:
        features = ", ".join(signals.drifting[:10])
        return Trigger("drift", f"sustained drift in {incumbent.version}: {features}")
    if retraining.on_quality_drop is not None and signals.quality is not None:
        dropped = quality_drop(spec, signals.quality)
        if dropped is not None and dropped[1] >= retraining.on_quality_drop:
            metric, worse = dropped
            return Trigger(
                "qualityDrop",
                f"{incumbent.version}'s {metric} on {signals.quality.labelled:,} matured outcomes is {worse:.1%} worse"
                f" than held out, beyond onQualityDrop {retraining.on_quality_drop:.0%}",
            )
    return None
