"""Every kopf handler of the operator, thin: each names the ModelDeployment concerned and reconciles it."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from typing import Any

import aiohttp
import kopf
import prometheus_client

from steward_operator import modes, reconciling, specs, telemetry
from steward_operator.evidence import MetricProvider, MonitorSource, metric_provider
from steward_operator.evidence.monitor import Monitor
from steward_operator.kinds import MODEL_COMMAND, MODEL_DEPLOYMENT
from steward_operator.kubernetes import ApiError, Cluster
from steward_operator.settings import METRICS_PORT, MONITOR_URL, PROMETHEUS_URL, RESYNC_SECONDS

STATE_PREFIX = specs.GROUP

_cluster: Cluster | None = None
# Where release evidence is read; None: releases move only on commands.
_evidence_source: MetricProvider | None = None
_monitor_source: MonitorSource | None = None
# One reconcile at a time per ModelDeployment, whichever handler asked for it.
_locks: dict[tuple[str, str], asyncio.Lock] = {}
_tasks: set[asyncio.Task[None]] = set()


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, logger: kopf.Logger, memo: kopf.Memo, **_: Any) -> None:
    global _cluster, _evidence_source, _monitor_source  # noqa: PLW0603 -- one client of each for the operator's lifetime
    # Keep kopf's own bookkeeping in annotations: status belongs to Steward and the CRD prunes unknown fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STATE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STATE_PREFIX, key="last-handled-configuration"
    )
    settings.posting.enabled = False  # Steward posts its own Events, one per decision.
    # The kinds are known: no need to watch CRDs, nor namespaces unless a glob must find them (which needs
    # RBAC to list and watch namespaces; the chart names namespaces exactly).
    settings.scanning.disabled = not any(_globbed(pattern) for pattern in memo.get("namespaces", []))
    settings.watching.server_timeout = 300
    _cluster = Cluster.connect()
    if PROMETHEUS_URL:
        _evidence_source = metric_provider("prometheus", PROMETHEUS_URL)
        logger.info("releases are decided on evidence from Prometheus at %s", PROMETHEUS_URL)
    else:
        logger.warning("no Prometheus URL is set (STEWARD_PROMETHEUS_URL): releases move only on commands")
    if MONITOR_URL:
        # The shadow stage's paired guardrails read the monitor's pairs of both versions' answers.
        _monitor_source = Monitor(MONITOR_URL)
    _tasks.add(asyncio.create_task(_resync(_cluster, list(memo.get("namespaces", []))), name="resync"))
    prometheus_client.start_http_server(METRICS_PORT)
    logger.info("serving metrics on :%d/metrics", METRICS_PORT)


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    for task in _tasks:
        task.cancel()
    if _cluster is not None:
        await _cluster.close()


@kopf.on.resume(*MODEL_DEPLOYMENT.resource)
@kopf.on.create(*MODEL_DEPLOYMENT.resource)
@kopf.on.update(*MODEL_DEPLOYMENT.resource)
async def model_deployment(namespace: str | None, name: str | None, retry: int, **_: Any) -> None:
    try:
        await _reconcile(namespace, name)
    except (ApiError, aiohttp.ClientError, TimeoutError) as error:
        # kopf calls again after the delay: 1, 2, 4 ... seconds, at most a minute.
        raise kopf.TemporaryError(f"will retry: {error}", delay=min(60, 2**retry)) from error


@kopf.on.event(*MODEL_COMMAND.resource, when=lambda status, **_: not (status or {}).get("handledAt"))
async def command(namespace: str | None, body: kopf.Body, spec: kopf.Spec, **_: Any) -> None:
    """A ModelCommand from kubectl steward that is not answered yet (new, or left when the operator stopped): it
    is carried out by its ModelDeployment's next reconcile, and answered in its own status."""
    await _reconcile(namespace, spec.get("modelDeployment"), dict(body))


async def child(namespace: str | None, meta: kopf.Meta, **_: Any) -> None:
    """A child a serving mode watches changed (an InferenceService became ready, say): its ModelDeployment may
    take a step."""
    owners = [owner for owner in meta.get("ownerReferences", []) if owner.get("kind") == specs.KIND]
    if owners:
        await _reconcile(namespace, owners[0]["name"])


for _kind in dict.fromkeys(kind for serving in modes.all_modes() for kind in serving.children):
    kopf.on.event(*_kind.resource, labels={"steward.dev/model": kopf.PRESENT}, id=f"child-{_kind.plural}")(child)


@kopf.on.delete(*MODEL_DEPLOYMENT.resource, optional=True)
async def deleted(namespace: str | None, name: str | None, **_: Any) -> None:
    """Children go with their owner through garbage collection; only the metrics are Steward's to drop.
    optional=True: no finalizer for this."""
    telemetry.forget(namespace or "", name or "")
    _locks.pop((namespace or "", name or ""), None)


async def _reconcile(namespace: str | None, name: str | None, command: dict[str, Any] | None = None) -> None:
    if namespace is None or name is None:
        return  # ModelDeployments are namespaced; nothing else reaches here.
    if _cluster is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    async with _locks.setdefault((namespace, name), asyncio.Lock()):
        await reconciling.reconcile(
            _cluster, namespace, name, _evidence_source, command, monitor_source=_monitor_source
        )


async def _resync(cluster: Cluster, namespaces: list[str]) -> None:
    """Every RESYNC_SECONDS, reconcile every ModelDeployment even if nothing seemed to change: a missed watch
    event is caught up here. (kopf's own timers would put a finalizer on every object; this needs none.)"""
    plain = namespaces and not any(_globbed(pattern) for pattern in namespaces)
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        try:
            found, commands = [], []
            for namespace in namespaces if plain else [None]:
                found += await cluster.list(MODEL_DEPLOYMENT, namespace)
                commands += await cluster.list(MODEL_COMMAND, namespace)
            for item in found:
                namespace, name = item["metadata"]["namespace"], item["metadata"]["name"]
                if _served(namespace, namespaces):
                    await _reconcile(namespace, name)
            # A command whose first attempt failed (the API server was away, say) is carried out now.
            for item in commands:
                namespace = item["metadata"]["namespace"]
                if _served(namespace, namespaces) and not (item.get("status") or {}).get("handledAt"):
                    command = {"apiVersion": MODEL_COMMAND.api_version, "kind": MODEL_COMMAND.kind, **item}
                    await _reconcile(namespace, item["spec"].get("modelDeployment"), command)
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            logging.getLogger(__name__).warning("resync failed, next in %.0f s: %s", RESYNC_SECONDS, error)


def _served(namespace: str, namespaces: list[str]) -> bool:
    return not namespaces or any(fnmatch.fnmatchcase(namespace, pattern) for pattern in namespaces)


def _globbed(pattern: str) -> bool:
    return bool(set(pattern) & set("*?["))
