"""Online serving: one KServe InferenceService per live version behind the traffic provider's routes, released
through shadow and canary steps judged on the predictors' own metrics."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Literal

from steward_contracts import environment as env
from steward_contracts.metrics import DRIFT_THRESHOLDS
from steward_operator import settings, specs
from steward_operator.children import Owner, child_name, owned, predictor_service
from steward_operator.evidence.base import Gateway
from steward_operator.kinds import Kind
from steward_operator.modes.base import Live, Plan, Release
from steward_operator.stages import ONLINE, Layout
from steward_operator.traffic import Backend, Split, provider

INFERENCE_SERVICE = Kind("serving.kserve.io/v1beta1", "InferenceService", "inferenceservices")
# How long a stopping predictor keeps answering: gateways and kube-proxy send it requests until they learn its
# endpoint is gone, a second or two after it starts terminating; stopping at once answers those with 502s.
DRAIN_SECONDS = 10
# KServe's Standard (raw Deployment) mode reports an InferenceService Ready for as long as its Deployment's last
# rollout stands complete, even once no pod is left; only the predictor Service's endpoints tell.
_DEPLOYMENT_MODES = frozenset({"Standard", "RawDeployment"})


class Online:
    name: str = "online"
    layout: Layout = ONLINE
    evidence: Literal["scrapes", "runs"] = "scrapes"
    lags: bool = False
    children: tuple[Kind, ...] = (INFERENCE_SERVICE,)

    def plan(self, owner: Owner, spec: specs.ModelDeploymentSpec, release: Release) -> Plan:
        """One InferenceService per live version, and the routes that split traffic between them; with KServe's own
        canary, one InferenceService whose revisions split it."""
        traffic = provider(spec.rollout.traffic.provider)
        incumbent = backend(owner.name, owner.namespace, release.incumbent.version)
        challenger = backend(owner.name, owner.namespace, release.challenger.version) if release.challenger else None
        split = Split(incumbent, challenger, release.challenger_weight, release.shadow_percent)
        if traffic.one_inference_service:
            # The newest version's predictor; KServe keeps the one rolled out before it for the rest of the traffic.
            newest = release.challenger or release.incumbent
            service = inference_service(owner, spec, newest, traffic.predictor_patch(split))
            service["metadata"]["name"] = owner.name
            return Plan(serving=[service], routes=traffic.routes(owner, split))
        services = [inference_service(owner, spec, release.incumbent)]
        if release.challenger is not None:
            services.append(inference_service(owner, spec, release.challenger, traffic.predictor_patch(split)))
        return Plan(serving=services, routes=traffic.routes(owner, split))

    def ready(self, child: dict[str, Any], answering: frozenset[str], *, current: bool) -> bool | None:
        """An InferenceService is ready when its Ready condition holds for its current generation and, in Standard
        mode, its predictor Service answers. With `current` False, as while a change rolls out: Ready for any
        generation, or, in Standard mode, Ready unknown (KServe's reading of a Deployment whose new pods are still
        starting) while the Service's old pods answer on."""
        if child["kind"] != INFERENCE_SERVICE.kind:
            return None
        status = child.get("status") or {}
        latest = status.get("observedGeneration") in (None, child["metadata"].get("generation"))
        conditions = {condition.get("type"): condition.get("status") for condition in status.get("conditions", [])}
        service = self.answering_service(child)
        answers = service is None or service in answering
        if not current and conditions.get("Ready") == "Unknown":
            return service is not None and answers
        return (latest or not current) and conditions.get("Ready") == "True" and answers

    def answering_service(self, child: dict[str, Any]) -> str | None:
        """The predictor Service of an InferenceService in Standard mode."""
        if (
            child["kind"] != INFERENCE_SERVICE.kind
            or (child.get("status") or {}).get("deploymentMode") not in _DEPLOYMENT_MODES
        ):
            return None
        return predictor_service(child["metadata"]["name"])

    def gateway(self, model: str, namespace: str, version: str, spec: specs.ModelDeploymentSpec) -> Gateway:
        """The traffic provider's gateway, counting what it answered for the version's predictor Service."""
        found = backend(model, namespace, version)
        return Gateway(spec.rollout.traffic.provider, found.namespace, found.service, found.port)

    def describe_shadow(self, spec: specs.ModelDeploymentSpec) -> str:
        percent = spec.rollout.shadow.percent if spec.rollout.shadow else 100
        return f"shadow, {percent}% of requests mirrored"


def backend(model: str, namespace: str, version: str) -> Backend:
    """The Service a version's traffic is sent to: its own predictor's."""
    return Backend(predictor_service(child_name(model, version)), namespace)


def monitor_token(key: str, namespace: str, model: str) -> str:
    """The token the monitor takes one ModelDeployment's predictions with, and no other's:
    `namespace/model/hex(HMAC-SHA256(key, "namespace/model"))`, as the monitor derives it from the same key."""
    scope = f"{namespace}/{model}"
    return f"{scope}/{hmac.new(key.encode(), scope.encode(), hashlib.sha256).hexdigest()}"


def monitor_environment(owner: Owner) -> list[dict[str, Any]]:
    """Where a predictor reports every prediction, the namespace they are filed under (with `owner`'s name), and
    the token the monitor takes them with; none without a monitor."""
    if not settings.MONITOR_URL:
        return []
    found = [
        {"name": env.MONITOR_URL, "value": settings.MONITOR_URL},
        {"name": env.NAMESPACE, "value": owner.namespace},
    ]
    if settings.MONITOR_INGEST_KEY:
        token = monitor_token(settings.MONITOR_INGEST_KEY, owner.namespace, owner.name)
        found.append({"name": env.MONITOR_TOKEN, "value": token})
    return found


def drift_environment(spec: specs.ModelDeploymentSpec) -> list[dict[str, Any]]:
    """spec.monitoring.drift for a predictor to publish: the monitor judges the version's drift by it (its levels,
    persistence and window). None when drift is not watched."""
    drift = spec.monitoring.drift
    if not drift.enabled:
        return []
    persistence = drift.persistence
    values = (drift.warn, drift.alert, persistence.breaches, persistence.windows, specs.seconds(drift.window))
    return [
        {"name": env.drift_threshold(name), "value": f"{value:g}"}
        for name, value in zip(DRIFT_THRESHOLDS, values, strict=True)
    ]


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
        {"name": env.MODEL_VERSION, "value": live.version},
    ]
    if live.digest:
        environment.append({"name": env.BUNDLE_DIGEST, "value": live.digest})
    if spec.model.trusted_types:
        environment.append({"name": env.TRUSTED_TYPES, "value": ",".join(spec.model.trusted_types)})
    environment += drift_environment(spec)
    environment += monitor_environment(owner)
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
    service = owned(owner, INFERENCE_SERVICE, {"predictor": predictor})
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
