"""The evidence a ModelDeployment is judged on, read for it: what the decision engine needs for the current stage
of a release, the digests its predictors report, and a stream's lag, from the metric provider and the monitor."""

from __future__ import annotations

import asyncio
from datetime import datetime

from steward_operator import guardrails, modes, releases, specs
from steward_operator.evidence import (
    HeldOutResults,
    MetricProvider,
    MetricsUnavailableError,
    MonitorSource,
    Outcomes,
    PairCounts,
    runs,
)
from steward_operator.evidence.runs import RunSource
from steward_operator.stages import Stage
from steward_operator.validation import HeldOut, Holdouts


async def gather(
    source: MetricProvider | None,
    deployment: specs.ModelDeployment,
    namespace: str,
    now: datetime,
    *,
    monitor_source: MonitorSource | None = None,
    run_source: RunSource | None = None,
) -> releases.Evidence | None:
    """The evidence the decision engine needs for the current stage of a release: both versions' held-out results
    while Validating, and what each served since the stage began in Shadowing and Canary; read from `source` (and
    `monitor_source` for paired answers and outcomes), or for a mode judged on its challenger's runs (batch) from
    `run_source`. None when no stage is being judged: no release, paused, traffic not yet moved, or no run source
    for such a mode. A source that cannot be read gives evidence with neither part: the release pauses until it
    can."""
    spec, status = deployment.spec, deployment.status
    incumbent, challenger = status.incumbent, status.challenger
    if incumbent is None or challenger is None or status.paused or status.phase not in releases.RELEASE_PHASES:
        return None
    serving = modes.mode(spec.serving.mode)
    if serving is None or status.weights != releases.target_weights(spec, status):
        return None
    stage = Stage(status.phase or "Validating", status.canary_step)
    try:
        if serving.evidence == "runs":
            return (
                None
                if run_source is None
                else await _from_runs(run_source, deployment, namespace, stage, now, monitor_source)
            )
        return (
            None
            if source is None
            else await _from_scrapes(source, deployment, namespace, stage, now, monitor_source, serving)
        )
    except MetricsUnavailableError:
        return releases.Evidence(challenger.version, stage, status.stage_started)


async def _from_scrapes(  # noqa: PLR0917 -- the sources and what gather found of the release
    source: MetricProvider,
    deployment: specs.ModelDeployment,
    namespace: str,
    stage: Stage,
    now: datetime,
    monitor_source: MonitorSource | None,
    serving: modes.ServingMode,
) -> releases.Evidence:
    spec, status = deployment.spec, deployment.status
    incumbent, challenger = status.incumbent, status.challenger
    if incumbent is None or challenger is None:
        raise ValueError("no release to gather evidence for")
    name, since = deployment.metadata["name"], status.stage_started
    if stage.phase == "Validating":
        held_i, held_c = await asyncio.gather(
            source.held_out(name, incumbent.version, now, namespace=namespace),
            source.held_out(name, challenger.version, now, namespace=namespace),
        )
        holdouts = Holdouts(_held_out(held_i), _held_out(held_c))
        return releases.Evidence(challenger.version, stage, since, holdouts=holdouts)
    pairs = None
    if monitor_source is not None and stage.phase == "Shadowing" and _paired(spec):
        pairs = await _pairs(monitor_source, deployment, namespace, since or now)
    counts_i, counts_c = await asyncio.gather(
        *(
            source.window(
                name,
                version,
                since or now,
                now,
                namespace=namespace,
                gateway=serving.gateway(name, namespace, version, spec),
            )
            for version in (incumbent.version, challenger.version)
        )
    )
    outcomes = await _outcomes(monitor_source, deployment, now) if monitor_source is not None else None
    window = guardrails.Window(counts_i, counts_c, pairs, outcomes)
    return releases.Evidence(challenger.version, stage, since, window=window)


async def _from_runs(  # noqa: PLR0917 -- the sources and what gather found of the release
    source: RunSource,
    deployment: specs.ModelDeployment,
    namespace: str,
    stage: Stage,
    now: datetime,
    monitor_source: MonitorSource | None,
) -> releases.Evidence:
    """The evidence of the challenger's runs that compared it with this incumbent: in Validating, both bundles'
    held-out results from the newest run since the challenger began; in Shadowing, the sum of the runs that
    finished since the stage began, and where a guardrail reads outcomes, the monitor's pairs and outcomes of the
    incumbent's runs, which scored each row with both bundles. A run that could not load the challenger's bundle
    is its failure."""
    status = deployment.status
    incumbent, challenger = status.incumbent, status.challenger
    if incumbent is None or challenger is None:
        raise ValueError("no release to gather evidence for")
    started = status.stage_started
    since = (challenger.since if stage.phase == "Validating" else started) or now
    found = await source.runs(deployment.metadata["name"], challenger.version, since, namespace=namespace)
    refused = next((run for run in found if run.failed == runs.REFUSED), None)
    failure = None if refused is None else f"its run {refused.job} could not load its bundle: {refused.error}"
    compared = [run for run in found if run.compares(incumbent.version, challenger.version)]
    if stage.phase == "Validating":
        newest = compared[-1] if compared else None
        holdouts = Holdouts(
            _held_out(newest.incumbent.held_out if newest and newest.incumbent else None),
            _held_out(newest.challenger.held_out if newest and newest.challenger else None),
        )
        return releases.Evidence(challenger.version, stage, started, holdouts=holdouts, failure=failure)
    counts_i, counts_c, compared_pairs = runs.window(compared)
    pairs: PairCounts | None = compared_pairs
    outcomes = None
    if monitor_source is not None and guardrails.on_outcomes(deployment.spec):
        # The pairs with their outcomes, where the incumbent's output is labelled; none, the paired guardrails wait.
        pairs = await _pairs(monitor_source, deployment, namespace, started or now)
        outcomes = await _outcomes(monitor_source, deployment, now)
    window = guardrails.Window(counts_i, counts_c, pairs, outcomes)
    return releases.Evidence(challenger.version, stage, started, window=window, failure=failure)


async def _pairs(
    source: MonitorSource, deployment: specs.ModelDeployment, namespace: str, since: datetime
) -> PairCounts | None:
    """Both versions' answers to the same requests since `since`, as the monitor paired them; None when they cannot
    be read (the paired guardrails wait, and say why)."""
    incumbent, challenger = deployment.status.incumbent, deployment.status.challenger
    if incumbent is None or challenger is None:
        return None
    try:
        return await source.pairs(
            deployment.metadata["name"], incumbent.version, challenger.version, since, namespace=namespace
        )
    except MetricsUnavailableError:
        return None


async def _outcomes(source: MonitorSource, deployment: specs.ModelDeployment, now: datetime) -> Outcomes | None:
    """Both versions' losses on their matured outcomes since the challenger began serving, where the rollout has an
    outcome guardrail: the predictions made until the label delay ago, whose outcomes are due. None when they
    cannot be read (the guardrail waits, and says why)."""
    spec, status = deployment.spec, deployment.status
    watched = spec.monitoring.outcome
    if watched is None or not any(guardrail.name == "outcome" for guardrail in spec.rollout.guardrails):
        return None
    incumbent, challenger = status.incumbent, status.challenger
    if incumbent is None or challenger is None:
        return None
    since, until = challenger.since or now, now - specs.as_timedelta(watched.label_delay)
    if until <= since:  # Nothing the challenger predicted is old enough yet.
        return Outcomes(watched.metric, None, None, until, watched.min_labels)
    try:
        found = await source.losses(
            deployment.metadata["name"], watched.metric, since, until, namespace=deployment.metadata["namespace"]
        )
    except MetricsUnavailableError:
        return None
    return Outcomes(
        watched.metric, found.get(incumbent.version), found.get(challenger.version), until, watched.min_labels
    )


def _paired(spec: specs.ModelDeploymentSpec) -> bool:
    """Whether a guardrail of the rollout compares paired answers."""
    return any(guardrails.GUARDRAILS[guardrail.name].paired for guardrail in spec.rollout.guardrails)


async def reported_digests(
    source: MetricProvider, deployment: specs.ModelDeployment, namespace: str, now: datetime
) -> dict[str, frozenset[str]]:
    """The bundle digests reported by the predictors of each version that is not pinned yet, where they are
    scraped: what it will be pinned to. Nothing while the metrics cannot be read."""
    serving = modes.mode(deployment.spec.serving.mode)
    if serving is None or serving.evidence != "scrapes":
        return {}
    status, name = deployment.status, deployment.metadata["name"]
    unpinned = [served.version for served in (status.incumbent, status.challenger) if served and not served.digest]
    found = {}
    try:
        for version in unpinned:
            results = await source.held_out(name, version, now, namespace=namespace)
            if results is not None and results.digests:
                found[version] = results.digests
    except MetricsUnavailableError:
        return {}
    return found


def _held_out(found: HeldOutResults | None) -> HeldOut | None:
    return None if found is None else HeldOut(found.metrics, found.data)


async def read_lag(
    source: MetricProvider, deployment: specs.ModelDeployment, step: releases.Step, now: datetime
) -> releases.Step:
    """A stream's lag per live version into status, as its workers report it now; the last reading stays while the
    metrics cannot be read or no worker reports (between a rolling update's scrapes), and none is kept once the mode
    reports none. More workers than the input topic has
    partitions is warned of once, when first seen: the ones beyond stand idle."""
    serving = modes.mode(deployment.spec.serving.mode)
    if serving is None or not serving.lags:
        lag = None
    else:
        try:
            found = await source.lag(deployment.metadata["name"], namespace=deployment.metadata["namespace"])
        except MetricsUnavailableError:
            return step
        if not found:
            return step
        lag = [
            specs.Lag(version=version, records=behind.records, partitions=behind.partitions, observed_at=now)
            for version, behind in sorted(found.items())
        ]
    if lag == step.status.lag:
        return step
    decisions = step.decisions
    streaming = deployment.spec.serving.streaming
    version = step.status.incumbent.version if step.status.incumbent else ""
    partitions = {item.version: item.partitions for item in lag or []}.get(version)
    before = {item.version: item.partitions for item in step.status.lag or []}.get(version)
    if streaming is not None and partitions and streaming.replicas > partitions != before:
        idle = (
            f"{streaming.replicas} workers for the {partitions} partitions of {streaming.input_topic}: "
            f"{streaming.replicas - partitions} stand idle (serving.streaming.replicas at most {partitions}, or more "
            "partitions)"
        )
        decisions = (*decisions, releases.Decision("IdleWorkers", idle, warning=True))
    return releases.Step(step.status.model_copy(update={"lag": lag}), decisions)
