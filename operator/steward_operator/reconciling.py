"""Reconciling one ModelDeployment, top to bottom: observe its children and the current stage's evidence, take
the next release step, apply what that step plans, record status, prune what is no longer planned, and tell
what was decided."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from steward_operator import (
    gathering,
    modes,
    planners,
    releases,
    releasing,
    retraining,
    specs,
    telemetry,
    traffic,
)
from steward_operator.children import CHALLENGER_LABEL, VERSION_LABEL, Owner
from steward_operator.evidence import MetricProvider, MetricsUnavailableError, MonitorSource
from steward_operator.evidence.runs import ClusterRuns
from steward_operator.kinds import (
    CRON_JOB,
    ENDPOINT_SLICE,
    GATEWAY,
    GATEWAY_CLASS,
    JOB,
    MODEL_COMMAND,
    MODEL_DEPLOYMENT,
    Kind,
)
from steward_operator.kubernetes import ApiError, Cluster, ConflictError, NotFoundError
from steward_operator.traffic import gateway_api
from steward_operator.traffic.base import MirrorRefusal, parent

CONFLICT_RETRIES = 5
CHILD_KINDS = tuple(
    dict.fromkeys(
        [*(kind for serving in modes.all_modes() for kind in serving.children), *traffic.route_kinds(), CRON_JOB]
    )
)
"""Every kind of child a ModelDeployment can own: what its serving modes and traffic providers make, and the
retraining schedule's CronJob. Retraining Jobs are owned too, but never pruned: each is a record of a run."""
_BY_NAME = {(kind.api_version, kind.kind): kind for kind in CHILD_KINDS}


def kind_of(child: dict[str, Any]) -> Kind:
    """The kind of a child Steward makes."""
    return _BY_NAME[child["apiVersion"], child["kind"]]


async def reconcile(
    cluster: Cluster,
    namespace: str,
    name: str,
    evidence_source: MetricProvider | None = None,
    command: dict[str, Any] | None = None,
    *,
    monitor_source: MonitorSource | None = None,
) -> releases.Step | None:
    """Bring one ModelDeployment's children and status to where its spec and status say they should be; with an
    `evidence_source` (and a `monitor_source` for paired answers in shadow), releases move on the decision engine's
    verdicts as well as on commands. A `command` (a ModelCommand for it) is carried out in the same step and
    answered in its own status. A concurrent write to the ModelDeployment (a spec change) means starting over from
    a fresh read, a few times, waiting longer each time."""
    started = time.perf_counter()
    for attempt in range(CONFLICT_RETRIES):
        body = await cluster.get(MODEL_DEPLOYMENT, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            if command is not None:
                await _answer(cluster, command, None, f"refused: there is no ModelDeployment {name} in {namespace}")
            return None
        try:
            step = await _reconcile_once(cluster, body, evidence_source, command, monitor_source)
        except ConflictError:
            telemetry.RECONCILES.labels("conflict").inc()
            await asyncio.sleep(0.05 * 2**attempt)
            continue
        except Exception:
            telemetry.RECONCILES.labels("error").inc()
            raise
        telemetry.RECONCILES.labels("ok").inc()
        telemetry.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return step
    raise ConflictError(409, "Conflict", f"{namespace}/{name} kept changing while it was reconciled")


async def _reconcile_once(
    cluster: Cluster,
    body: dict[str, Any],
    evidence_source: MetricProvider | None,
    command: dict[str, Any] | None,
    monitor_source: MonitorSource | None = None,
) -> releases.Step:
    deployment = specs.ModelDeployment.model_validate(body)
    metadata = body["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    taken = _taken(deployment.status.operation, command)
    if taken is not None:
        deployment = deployment.model_copy(update={"status": deployment.status.model_copy(update={"operation": taken})})
    children = await _observe(cluster, namespace, name, uid)
    endpoints = await serving_endpoints(cluster, namespace, children)
    now = datetime.now(UTC)
    evidence = await gathering.gather(
        evidence_source, deployment, namespace, now, monitor_source=monitor_source, run_source=ClusterRuns(cluster)
    )
    digests = {}
    if evidence_source is not None:
        digests = await gathering.reported_digests(evidence_source, deployment, namespace, now)
    observed = releases.Observed(
        metadata.get("generation", 0),
        now,
        ready_versions(children, endpoints),
        evidence,
        digests,
        ready_versions(children, endpoints, current=False),
        mirroring_refused=await _mirroring_refused(cluster, deployment, namespace),
    )

    step = releasing.advance(deployment.spec, deployment.status, observed)
    plan = modes.Plan()
    claimed = {(child["kind"], child["metadata"]["name"]) for child in children}
    try:
        plan = _plan(deployment, namespace, name, uid, step)
        # What serves first, then the routes to it. A child ready as soon as it exists (a CronJob) moves the
        # release on the next reconcile, which its watch event starts.
        await _apply(cluster, plan.serving, uid, claimed)
        await _apply(cluster, plan.routes, uid, claimed)
    except _RefusedError as refused:
        step = releasing.stall(
            deployment.spec, step, observed, refused.reason, refused.message, before=deployment.status
        )
        plan = modes.Plan()  # Half applied: prune nothing, so what served keeps serving.
    step = await _retrain(cluster, evidence_source, deployment, step, now=observed.now)
    if evidence_source is not None:
        step = await gathering.read_lag(evidence_source, deployment, step, now=observed.now)

    status = step.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    if status != body.get("status"):
        await cluster.replace_status(MODEL_DEPLOYMENT, body, status)
    operation = step.status.operation
    if command is not None and operation and operation.handled_at and operation.command == command["metadata"]["name"]:
        await _answer(cluster, command, body, operation.result or "done")
    await _prune(cluster, children, plan)
    for decision in step.decisions:
        telemetry.DECISIONS.labels(decision.reason).inc()
        await cluster.record(body, decision.reason, decision.message, decision.warning)
    telemetry.observe(namespace, name, step.status)
    return step


def _taken(current: specs.Operation | None, command: dict[str, Any] | None) -> specs.Operation | None:
    """The operation a ModelCommand asks for, unless status already records it (carried out before its answer
    could be written): a command is carried out once."""
    if command is None:
        return None
    if current is not None and current.command == command["metadata"]["name"]:
        return None
    parsed = specs.ModelCommand.model_validate(command)
    return specs.Operation(
        action=parsed.spec.action,
        to_version=parsed.spec.to_version,
        requested_at=command["metadata"]["creationTimestamp"],
        requested_by=parsed.spec.requested_by,
        command=command["metadata"]["name"],
    )


async def _answer(cluster: Cluster, command: dict[str, Any], deployment: dict[str, Any] | None, result: str) -> None:
    """Write what became of a ModelCommand into its status, and tie it to its ModelDeployment so it goes with it."""
    refused = result.startswith("refused")
    handled = datetime.now(UTC).isoformat(timespec="seconds")
    answer = {"outcome": "Refused" if refused else "Done", "handledAt": handled, "result": result[:1024]}
    await cluster.merge(MODEL_COMMAND, command, {"status": answer}, "status")
    if deployment is not None:
        metadata = deployment["metadata"]
        owner = {"apiVersion": deployment["apiVersion"], "kind": deployment["kind"], "name": metadata["name"]}
        await cluster.merge(
            MODEL_COMMAND, command, {"metadata": {"ownerReferences": [{**owner, "uid": metadata["uid"]}]}}
        )


def _plan(deployment: specs.ModelDeployment, namespace: str, name: str, uid: str, step: releases.Step) -> modes.Plan:
    if step.status.incumbent is None:
        return modes.Plan()
    return planners.plan(name, namespace, uid, deployment.spec, planners.release_of(step.status))


async def _retrain(
    cluster: Cluster,
    evidence_source: MetricProvider | None,
    deployment: specs.ModelDeployment,
    step: releases.Step,
    *,
    now: datetime,
) -> releases.Step:
    """The retraining step on the status the release step produced: start the team's Job when a trigger fires."""
    metadata, spec = deployment.metadata, deployment.spec
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    signals = await retraining_signals(cluster, evidence_source, deployment, uid, step.status)
    owner = Owner(name=name, namespace=namespace, uid=uid, traffic=spec.rollout.traffic)
    retrained = retraining.step(owner, spec, step.status, signals, now)
    if retrained.job is not None:
        await cluster.apply(JOB, retrained.job)
    return releases.Step(retrained.status, (*step.decisions, *retrained.decisions))


async def retraining_signals(
    cluster: Cluster,
    source: MetricProvider | None,
    deployment: specs.ModelDeployment,
    uid: str,
    status: specs.ModelDeploymentStatus,
) -> retraining.Signals:
    """The retraining Jobs this ModelDeployment owns, the serving version's sustained drift (unless
    monitoring.drift is disabled) and, when onQualityDrop asks for it, its quality. None when the metrics cannot
    be read: unknown is not a trigger, and leaves the Drifting condition as it was."""
    metadata, spec = deployment.metadata, deployment.spec
    namespace, name = metadata["namespace"], metadata["name"]
    jobs = {}
    # A ModelDeployment that never retrained and cannot costs no API call.
    if spec.retraining is not None or status.retrainings:
        for job in await cluster.list(JOB, namespace, f"steward.dev/model={name},steward.dev/retraining"):
            if any(owner.get("uid") == uid for owner in job["metadata"].get("ownerReferences", [])):
                jobs[job["metadata"]["name"]] = _job(job)
    if source is None or status.incumbent is None:
        return retraining.Signals(jobs=jobs)
    version, wanted = status.incumbent.version, spec.retraining
    drifting, quality = None, None
    try:
        if spec.monitoring.drift.enabled:
            drifting = await source.drifting(name, version, namespace=namespace)
        if wanted is not None and wanted.on_quality_drop is not None:
            quality = await source.quality(name, version, namespace=namespace)
    except MetricsUnavailableError:
        pass
    return retraining.Signals(drifting=drifting, quality=quality, jobs=jobs)


def _job(body: dict[str, Any]) -> retraining.Job:
    """A retraining Job as retraining.step reads it: its state from its conditions, the rest from annotations."""
    metadata = body["metadata"]
    conditions = {item.get("type"): item.get("status") for item in (body.get("status") or {}).get("conditions", [])}
    state: Literal["running", "succeeded", "failed"] = "running"
    if conditions.get("Complete") == "True":
        state = "succeeded"
    elif conditions.get("Failed") == "True":
        state = "failed"
    annotations = metadata.get("annotations", {})
    reason = annotations.get("steward.dev/retrain-reason", "manual")
    return retraining.Job(
        state=state,
        reason=reason if reason in get_args(retraining.Reason) else "manual",
        message=annotations.get("steward.dev/retrain-message", ""),
        version=annotations.get("steward.dev/retrain-version", ""),
        started=datetime.fromisoformat(metadata["creationTimestamp"].replace("Z", "+00:00")),
    )


async def _mirroring_refused(
    cluster: Cluster, deployment: specs.ModelDeployment, namespace: str
) -> MirrorRefusal | None:
    """Why the gateway-api provider may not write a RequestMirror filter: the parent Gateway's class does not
    declare mirroring, or cannot be read. Read only while a release is under way or about to start; a route
    attached to no Gateway carries no live traffic to take down."""
    spec, status = deployment.spec, deployment.status
    gateway = parent(spec.rollout.traffic.gateway, namespace)
    releasing_now = status.challenger is not None or not releases.same_model(status.incumbent, spec.model)
    if spec.rollout.traffic.provider != gateway_api.GatewayApi.name or gateway is None or not releasing_now:
        return None
    where = f"{gateway[0]}/{gateway[1]}"
    try:
        found = await cluster.get(GATEWAY, *gateway)
        name = gateway_api.class_name(found)
        gateway_class = await cluster.get(GATEWAY_CLASS, None, name) if name else None
    except ApiError as error:
        if error.status not in (401, 403):
            raise
        unreadable = (
            f"the operator may not read the Gateway or its GatewayClass ({error.status} {error.reason}): grant it"
            " get on gateways and gatewayclasses, as the chart does"
        )
        seen = gateway_api.GatewayClass(where, unreadable=unreadable)
    else:
        seen = gateway_api.GatewayClass.read(where, found, gateway_class)
    return gateway_api.mirror_refusal(seen, releases.shadow_percent(spec))


async def _observe(cluster: Cluster, namespace: str, name: str, uid: str) -> list[dict[str, Any]]:
    """The children this ModelDeployment owns, of every kind Steward makes."""
    found = []
    for kind in CHILD_KINDS:
        for child in await cluster.list(kind, namespace, f"steward.dev/model={name}"):
            owners = child["metadata"].get("ownerReferences", [])
            if any(owner.get("uid") == uid for owner in owners):
                found.append({"apiVersion": kind.api_version, "kind": kind.kind, **child})
    return found


SERVICE_NAME = "kubernetes.io/service-name"
"""The label naming an EndpointSlice's Service."""


async def serving_endpoints(cluster: Cluster, namespace: str, children: list[dict[str, Any]]) -> frozenset[str]:
    """Of the Services whose endpoints tell whether `children` answer, those with a ready endpoint (a pod that
    answers)."""
    services = sorted(
        {
            service
            for child in children
            for serving in modes.all_modes()
            if (service := serving.answering_service(child)) is not None
        }
    )
    if not services:
        return frozenset()
    slices = await cluster.list(ENDPOINT_SLICE, namespace, f"{SERVICE_NAME} in ({','.join(services)})")
    return frozenset(
        found["metadata"]["labels"][SERVICE_NAME]
        for found in slices
        if any(_serving(endpoint) for endpoint in found.get("endpoints") or [])
    )


def _serving(endpoint: dict[str, Any]) -> bool:
    """Whether an endpoint takes requests, as gateways read it: `serving` (ready, or still answering while it
    terminates, as the old pod of a rollout does), else `ready`; a missing condition means true."""
    conditions = endpoint.get("conditions") or {}
    return conditions.get("serving", conditions.get("ready")) is not False


def ready_versions(
    children: list[dict[str, Any]], endpoints: frozenset[str], *, current: bool = True
) -> frozenset[str]:
    """Versions whose serving child is ready, as its serving mode reads it (see modes.ready): the version it serves,
    and the challenger a stream's workers serve beside it. With `current` False, readiness for an older generation
    counts, as while a change rolls out."""
    found: set[str] = set()
    for child in children:
        labels = child["metadata"].get("labels", {})
        versions = {labels.get(VERSION_LABEL), labels.get(CHALLENGER_LABEL)} - {None}
        if versions and modes.ready(child, endpoints, current=current):
            found.update(version for version in versions if version)
    return frozenset(found)


async def _prune(cluster: Cluster, children: list[dict[str, Any]], plan: modes.Plan) -> None:
    """Delete what this ModelDeployment owns but no longer plans: a replaced version, a former provider's
    route. Only after status recorded the step that dropped them, so a restart never finds traffic
    pointing at something deleted."""
    planned = {(child["kind"], child["metadata"]["name"]) for child in [*plan.serving, *plan.routes]}
    if not planned:
        return  # Nothing planned means nothing could be planned (a stall): keep what serves.
    for child in children:
        if (child["kind"], child["metadata"]["name"]) not in planned:
            await cluster.delete(kind_of(child), child)


class _RefusedError(Exception):
    """A child cannot be applied for a reason retrying will not fix; reason and message are the Stalled
    condition's, in words a person can act on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message[:1024]

    @classmethod
    def refused(cls, child: dict[str, Any], error: ApiError) -> _RefusedError:
        kind, api_version = child["kind"], child["apiVersion"]
        if isinstance(error, NotFoundError):
            return cls(
                "KindNotInstalled",
                f"{kind} ({api_version}) is not installed in this cluster: install it (KServe, Gateway API, "
                "Istio or Traefik), or choose another spec.rollout.traffic.provider",
            )
        return cls("ChildRefused", f"the API server refused {kind} {child['metadata']['name']}: {error.message}")


async def _apply(cluster: Cluster, children: list[dict[str, Any]], uid: str, claimed: set[tuple[str, str]]) -> None:
    """Apply `children`, each only if it is this ModelDeployment's (`uid`) or does not exist yet: an object of the
    same name that someone else controls is never adopted nor overwritten. `claimed` holds the (kind, name) of
    children known to be ours, and grows with what is applied."""
    for child in children:
        key = (child["kind"], child["metadata"]["name"])
        if key not in claimed:
            await _claim(cluster, child, uid)
        try:
            await cluster.apply(kind_of(child), child)
        except ApiError as error:
            if isinstance(error, ConflictError) or error.status >= 500 or error.status in (401, 403, 429):
                raise
            raise _RefusedError.refused(child, error) from error
        claimed.add(key)


async def _claim(cluster: Cluster, child: dict[str, Any], uid: str) -> None:
    """Refuse to take `child`'s name when an object by that name exists and is not controlled by `uid`."""
    metadata = child["metadata"]
    existing = await cluster.get(kind_of(child), metadata["namespace"], metadata["name"])
    if existing is None:
        return  # Free (or the kind itself is missing, which applying reports).
    controllers = [owner for owner in existing["metadata"].get("ownerReferences", []) if owner.get("controller")]
    if any(owner.get("uid") == uid for owner in controllers):
        return
    holder = f"{controllers[0].get('kind')} {controllers[0].get('name')}" if controllers else "no controller"
    raise _RefusedError(
        "ChildOwnedElsewhere",
        f"{child['kind']} {metadata['name']} already exists and belongs to {holder}: Steward neither adopts nor "
        "overwrites it. Rename or delete that object, or give this ModelDeployment another name",
    )
