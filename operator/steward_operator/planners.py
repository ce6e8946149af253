"""Pure planning: from a ModelDeployment's spec and where its release stands, the children it should have."""

from __future__ import annotations

import copy
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from steward_operator import settings, specs
from steward_operator.children import Owner, child_name, owned, predictor_service
from steward_operator.traffic import Backend, Split, provider

KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
# How long a stopping predictor keeps answering: gateways and kube-proxy send it requests until they learn its
# endpoint is gone, a second or two after it starts terminating; stopping at once answers those with 502s.
DRAIN_SECONDS = 10


@dataclass(frozen=True)
class Live:
    """A version that serves: the incumbent, or the challenger during a release."""

    version: str
    bundle: str
    digest: str | None = None


@dataclass(frozen=True)
class Release:
    """Where the release stands, as status records it: who serves, and how traffic is split."""

    incumbent: Live
    challenger: Live | None = None
    challenger_weight: int = 0
    shadow_percent: int = 0


@dataclass(frozen=True)
class Plan:
    """The children a ModelDeployment should have, ready to apply: what serves first, then the routes."""

    inference_services: list[dict[str, Any]] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    cron_jobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def serving(self) -> list[dict[str, Any]]:
        return [*self.inference_services, *self.cron_jobs]


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
    """The children for the serving mode: InferenceServices and routes online, CronJobs in batch; none for
    streaming, which this version does not serve."""
    if spec.serving.mode == "online":
        found = plan_online(name, namespace, uid, spec, release)
    elif spec.serving.mode == "batch":
        found = plan_batch(name, namespace, uid, spec, release)
    else:
        return Plan()
    retraining = spec.retraining
    if retraining is not None and retraining.schedule is not None:
        owner = Owner(name=name, namespace=namespace, uid=uid, traffic=spec.rollout.traffic)
        found.cron_jobs.append(retraining_cron_job(owner, retraining, release.incumbent.version))
    return found


def backend(model: str, namespace: str, version: str) -> Backend:
    """The Service a version's traffic is sent to: its own predictor's."""
    return Backend(predictor_service(child_name(model, version)), namespace)


def monitor_token(key: str, namespace: str, model: str) -> str:
    """The token the monitor takes one ModelDeployment's predictions with, and no other's:
    `namespace/model/hex(HMAC-SHA256(key, "namespace/model"))`, as the monitor derives it from the same key."""
    scope = f"{namespace}/{model}"
    return f"{scope}/{hmac.new(key.encode(), scope.encode(), hashlib.sha256).hexdigest()}"


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
        {"name": "STEWARD_RETRAIN_REASON", "value": reason},
        {"name": "STEWARD_RETRAIN_MESSAGE", "value": message[:1024]},
        {"name": "STEWARD_MODEL", "value": owner.name},
        {"name": "STEWARD_NAMESPACE", "value": owner.namespace},
        {"name": "STEWARD_MODEL_VERSION", "value": version},
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
    cron = owned(owner, "batch/v1", "CronJob", body)
    cron["metadata"]["name"] = f"{owner.name[:50]}-retrain"
    cron["metadata"]["labels"]["steward.dev/retraining"] = "schedule"
    return cron


def plan_online(name: str, namespace: str, uid: str, spec: specs.ModelDeploymentSpec, release: Release) -> Plan:
    """One InferenceService per live version, and the routes that split traffic between them; with KServe's own
    canary, one InferenceService whose revisions split it."""
    traffic = provider(spec.rollout.traffic.provider)
    owner = Owner(name=name, namespace=namespace, uid=uid, traffic=spec.rollout.traffic)
    incumbent = backend(name, namespace, release.incumbent.version)
    challenger = backend(name, namespace, release.challenger.version) if release.challenger else None
    split = Split(incumbent, challenger, release.challenger_weight, release.shadow_percent)
    if traffic.one_inference_service:
        # The newest version's predictor; KServe keeps the one rolled out before it for the rest of the traffic.
        newest = release.challenger or release.incumbent
        service = inference_service(owner, spec, newest, traffic.predictor_patch(split))
        service["metadata"]["name"] = owner.name
        return Plan(inference_services=[service], routes=traffic.routes(owner, split))
    services = [inference_service(owner, spec, release.incumbent)]
    if release.challenger is not None:
        services.append(inference_service(owner, spec, release.challenger, traffic.predictor_patch(split)))
    return Plan(inference_services=services, routes=traffic.routes(owner, split))


def plan_batch(name: str, namespace: str, uid: str, spec: specs.ModelDeploymentSpec, release: Release) -> Plan:
    """One CronJob per live version: the incumbent writes the output; the challenger scores the same input on
    the same schedule into a shadow location, and stays suspended until the shadow stage begins."""
    owner = Owner(name=name, namespace=namespace, uid=uid, traffic=spec.rollout.traffic)
    jobs = [cron_job(owner, spec, release.incumbent, "incumbent", suspended=False)]
    if release.challenger is not None:
        jobs.append(cron_job(owner, spec, release.challenger, "shadow", suspended=not release.shadow_percent))
    return Plan(cron_jobs=jobs)


def cron_job(
    owner: Owner, spec: specs.ModelDeploymentSpec, live: Live, variant: str, suspended: bool
) -> dict[str, Any]:
    """A CronJob running the predictor image's batch command (steward-predict batch) on `live`'s bundle."""
    batch = spec.serving.batch
    if batch is None:
        raise ValueError("serving.batch is required in batch mode")
    arguments = ["batch", "--bundle", live.bundle]
    if live.digest:
        arguments += ["--digest", live.digest]
    for name in spec.model.trusted_types:
        arguments += ["--trust-type", name]
    output, rejects = batch.output, batch.rejects
    if variant == "shadow":
        output = shadow_location(output, live.version)
        rejects = shadow_location(rejects, live.version) if rejects else None
    arguments += _location("input", batch.input) + _location("output", output)
    if rejects is not None:
        arguments += _location("rejects", rejects)
    arguments += ["--if-exists", "replace", "--chunk-rows", str(batch.chunk_rows)]
    secrets = {location.credentials_secret for location in (batch.input, output, rejects) if location} - {None}
    container: dict[str, Any] = {
        "name": "predictor",
        "image": settings.PREDICTOR_IMAGE,
        "command": ["steward-predict"],
        "args": arguments,
        "env": [
            {"name": "STEWARD_MODEL_VERSION", "value": live.version},
            {"name": "STEWARD_VARIANT", "value": variant},
        ],
    }
    if secrets:
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in sorted(s for s in secrets if s)]
    labels = {"steward.dev/model": owner.name, "steward.dev/version": live.version, "steward.dev/variant": variant}
    job_spec: dict[str, Any] = {
        "schedule": batch.schedule,
        "suspend": suspended,
        # A run still going when the next is due is left to finish; two never write the same output.
        "concurrencyPolicy": "Forbid",
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {
            "metadata": {"labels": labels},
            "spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": int(specs.seconds(batch.active_deadline)),
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"restartPolicy": "Never", "containers": [container]},
                },
            },
        },
    }
    if batch.time_zone:
        job_spec["timeZone"] = batch.time_zone
    job = owned(owner, "batch/v1", "CronJob", job_spec)
    job["metadata"]["name"] = child_name(owner.name, live.version)
    job["metadata"]["labels"].update({"app.kubernetes.io/name": "steward-batch", **labels})
    return job


def shadow_location(location: specs.DataLocation, version: str) -> specs.DataLocation:
    """Where a shadowing challenger writes: beside the output, never inside it. A table gets the suffix
    _shadow; a file scores.parquet becomes scores.shadow-<version>.parquet, a prefix scores/ becomes
    scores.shadow-<version>/."""
    if location.table:
        return location.model_copy(update={"table": f"{location.table}_shadow"})
    uri = location.uri.rstrip("/")
    head, slash, tail = uri.rpartition("/")
    stem, dot, suffix = tail.rpartition(".") if "." in tail else (tail, "", "")
    shadowed = f"{head}{slash}{stem}.shadow-{version}{dot}{suffix}"
    return location.model_copy(update={"uri": shadowed + ("/" if location.uri.endswith("/") else "")})


def _location(role: str, location: specs.DataLocation) -> list[str]:
    arguments = [f"--{role}", location.uri]
    if location.table:
        arguments += [f"--{role}-table", location.table]
    if location.format:
        arguments += [f"--{role}-format", location.format]
    return arguments


def _live(version: specs.ServedVersion) -> Live:
    return Live(version.version, version.bundle, version.digest)


def inference_service(
    owner: Owner, spec: specs.ModelDeploymentSpec, live: Live, patch: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A KServe InferenceService running the Steward predictor on `live`'s bundle. Nothing in it says whether
    the version is the incumbent or the challenger (status does): a promotion moves traffic, and never
    restarts the pods that are about to take all of it."""
    online = spec.serving.online or specs.OnlineServing()
    environment = [
        # KServe's storage initializer fetches STORAGE_URI into /mnt/models before the predictor starts.
        {"name": "STORAGE_URI", "value": live.bundle},
        {"name": "STEWARD_MODEL_VERSION", "value": live.version},
    ]
    if live.digest:
        environment.append({"name": "STEWARD_BUNDLE_DIGEST", "value": live.digest})
    if spec.model.trusted_types:
        environment.append({"name": "STEWARD_TRUSTED_TYPES", "value": ",".join(spec.model.trusted_types)})
    drift = spec.monitoring.drift
    if drift.enabled:
        # The monitor judges this version's drift by the thresholds its predictors publish.
        for name, value in (
            ("WARN", drift.warn),
            ("ALERT", drift.alert),
            ("BREACHES", drift.persistence.breaches),
            ("WINDOWS", drift.persistence.windows),
        ):
            environment.append({"name": f"STEWARD_DRIFT_{name}", "value": f"{value:g}"})
    if settings.MONITOR_URL:
        # Every prediction goes to the monitor, filed under this deployment's namespace and name.
        environment.append({"name": "STEWARD_MONITOR_URL", "value": settings.MONITOR_URL})
        environment.append({"name": "STEWARD_NAMESPACE", "value": owner.namespace})
        if settings.MONITOR_INGEST_KEY:
            token = monitor_token(settings.MONITOR_INGEST_KEY, owner.namespace, owner.name)
            environment.append({"name": "STEWARD_MONITOR_TOKEN", "value": token})
    port = settings.PREDICTOR_PORT
    container: dict[str, Any] = {
        "name": "kserve-container",
        "image": settings.PREDICTOR_IMAGE,
        "args": [f"--model_name={owner.name}", "--model_dir=/mnt/models", f"--http_port={port}"],
        "env": environment,
        "ports": [{"containerPort": port, "protocol": "TCP"}],
        # Not ready until the bundle checked out (digest, version, golden examples): the reason is in the body.
        "readinessProbe": {"httpGet": {"path": f"/v1/models/{owner.name}", "port": port}, "periodSeconds": 5},
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sleep", str(DRAIN_SECONDS)]}}},
    }
    if online.resources is not None:
        container["resources"] = online.resources.model_dump(by_alias=True, exclude_none=True)
    predictor: dict[str, Any] = {
        "minReplicas": online.min_replicas,
        "maxReplicas": online.max_replicas,
        "containers": [container],
        **(patch or {}),
    }
    service = owned(owner, KSERVE_API_VERSION, "InferenceService", {"predictor": predictor})
    metadata = service["metadata"]
    metadata["name"] = child_name(owner.name, live.version)
    metadata["labels"].update(
        {
            "app.kubernetes.io/name": "steward-predictor",
            # The CRD holds versions to label-value syntax.
            "steward.dev/version": live.version,
        }
    )
    metadata["annotations"] = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    return service
