"""Pure planning: from a ModelDeployment's spec and where its release stands, the children it should have."""

from __future__ import annotations

import copy
from typing import Any

from steward_contracts import environment as env
from steward_operator import modes, specs
from steward_operator.children import Owner, owned
from steward_operator.kinds import CRON_JOB
from steward_operator.modes import Live, Plan, Release


def release_of(status: specs.ModelDeploymentStatus) -> Release:
    """Who serves and how traffic is split, as status records it."""
    if status.incumbent is None:
        raise ValueError("a ModelDeployment has nothing to plan before it has an incumbent")
    weights = status.weights or specs.Weights()
    challenger = _live(status.challenger) if status.challenger else None
    return Release(
        _live(status.incumbent),
        challenger,
        weights.challenger if challenger else 0,
        weights.shadow if challenger else 0,
    )


def plan(name: str, namespace: str, uid: str, spec: specs.ModelDeploymentSpec, release: Release) -> Plan:
    """The children its serving mode plans for the live versions, and the retraining CronJob; none for a mode this
    operator has not."""
    serving = modes.mode(spec.serving.mode)
    if serving is None:
        return Plan()
    owner = Owner(name=name, namespace=namespace, uid=uid, traffic=spec.rollout.traffic)
    found = serving.plan(owner, spec, release)
    retraining = spec.retraining
    if retraining is not None and retraining.schedule is not None:
        found.serving.append(retraining_cron_job(owner, retraining, release.incumbent.version))
    return found


def retraining_job(
    owner: Owner, retraining: specs.Retraining, version: str, reason: str, message: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The metadata and spec of a retraining Job from the team's template: the trigger goes into annotations and
    into every container's environment, with the model, namespace and serving version."""
    template = retraining.job_template
    extra = copy.deepcopy(template.metadata or {})
    metadata = {
        "labels": {**extra.get("labels", {}), "steward.dev/model": owner.name, "steward.dev/retraining": reason},
        "annotations": {
            **extra.get("annotations", {}),
            "steward.dev/retrain-reason": reason,
            "steward.dev/retrain-message": message[:1024],
            "steward.dev/retrain-version": version,
        },
    }
    spec = copy.deepcopy(template.spec.model_dump(by_alias=True, exclude_none=True))
    environment = [
        {"name": env.RETRAIN_REASON, "value": reason},
        {"name": env.RETRAIN_MESSAGE, "value": message[:1024]},
        {"name": env.MODEL, "value": owner.name},
        {"name": env.NAMESPACE, "value": owner.namespace},
        {"name": env.MODEL_VERSION, "value": version},
    ]
    for container in spec["template"]["spec"]["containers"]:
        container["env"] = [*container.get("env", []), *environment]
    return metadata, spec


def retraining_cron_job(owner: Owner, retraining: specs.Retraining, version: str) -> dict[str, Any]:
    """spec.retraining.schedule: the team's Job on a calendar, one at a time."""
    metadata, job = retraining_job(owner, retraining, version, "schedule", f"on schedule {retraining.schedule}")
    body = {
        "schedule": retraining.schedule,
        "concurrencyPolicy": "Forbid",
        "jobTemplate": {"metadata": metadata, "spec": job},
    }
    cron = owned(owner, CRON_JOB, body)
    cron["metadata"]["name"] = f"{owner.name[:50]}-retrain"
    cron["metadata"]["labels"]["steward.dev/retraining"] = "schedule"
    return cron


def _live(version: specs.ServedVersion) -> Live:
    return Live(version.version, version.bundle, version.digest)
