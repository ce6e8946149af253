"""A small local data plane standing in for KServe where it is not installed: it marks InferenceServices ready,
optionally only once a real predictor process serves each one's bundle. It never touches Steward's objects."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from steward_harness.predictors import Predictor, PredictorError
from steward_harness.prometheus import Prometheus
from steward_harness.sweeping import Sweeper

INFERENCE_SERVICES = "/apis/serving.kserve.io/v1beta1"
GRACE_SECONDS = 2.0
BACKOFF_SECONDS = 10.0
"""How long a predictor that did not come up waits before it is started again, as a kubelet backs off."""


@dataclass
class DataPlane(Sweeper[Predictor]):
    """Polls every InferenceService and reports it Ready the way KServe does (a Ready condition for its current
    generation). Versions in `held` stay not ready, to show what waits for readiness."""

    prefix: str = ""
    """Only InferenceServices in namespaces starting with this are served."""
    held: set[str] = field(default_factory=set)
    predictor_namespaces: set[str] = field(default_factory=set)
    """In these namespaces, start `python -m steward_predictor` on each InferenceService's STORAGE_URI (a
    local path) and report it Ready only once that predictor's model is ready, as KServe's probe would."""
    prometheus: Prometheus | None = None
    """When given, scrapes every predictor started here, labelled with its namespace and pod as Kubernetes
    service discovery would label it."""
    routes: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, init=False)
    """HTTPRoutes in `predictor_namespaces`, by (namespace, name), as last seen: what the gateway follows."""
    _leaving: dict[str, float] = field(default_factory=dict, init=False)
    """Predictors whose InferenceService is gone, and when their grace period ends (monotonic seconds)."""
    _backoff: dict[str, float] = field(default_factory=dict, init=False)
    """InferenceServices whose predictor did not come up, and when it may be started again (monotonic seconds)."""

    def predictor(self, namespace: str, name: str) -> Predictor | None:
        """The process serving an InferenceService in one of `predictor_namespaces`."""
        return next((p for key, p in self._running.items() if key.startswith(f"{namespace}/{name}/")), None)

    def _sweep(self) -> None:
        # Routes first: traffic leaves a version before its predictor is retired below.
        routes = {}
        for namespace in list(self.predictor_namespaces):
            path = f"/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/httproutes"
            for route in self._request("GET", path).get("items", []):
                routes[namespace, route["metadata"]["name"]] = route
        self.routes = routes
        services = self._request("GET", f"{INFERENCE_SERVICES}/inferenceservices").get("items", [])
        alive = set()
        for service in services:
            metadata = service["metadata"]
            if not metadata["namespace"].startswith(self.prefix):
                continue
            generation = metadata.get("generation", 1)
            key = f"{metadata['namespace']}/{metadata['name']}/{metadata['uid']}/{generation}"
            alive.add(key)
            if metadata.get("labels", {}).get("steward.dev/version") in self.held or _ready(service):
                continue
            if metadata["namespace"] in self.predictor_namespaces and not self._serving(key, service):
                continue
            self._mark_ready(service)
        # A deleted InferenceService's predictor drains for a grace period, as a terminating pod does, so requests
        # the gateway routed just before the route changed are still answered.
        now = time.monotonic()
        for key in alive:
            self._leaving.pop(key, None)
        for key in set(self._running) - alive:
            if now >= self._leaving.setdefault(key, now + GRACE_SECONDS):
                self._leaving.pop(key)
                self._retire(key)

    def _serving(self, key: str, service: dict[str, Any]) -> bool:
        predictor = self._running.get(key)
        if predictor is None:
            if time.monotonic() < self._backoff.get(key, 0.0):
                return False
            (container,) = service["spec"]["predictor"]["containers"]
            environment = {item["name"]: item.get("value", "") for item in container.get("env", [])}
            name = next(arg.split("=", 1)[1] for arg in container["args"] if arg.startswith("--model_name="))
            predictor = Predictor(bundle=environment.pop("STORAGE_URI"), name=name, env=environment)
            try:
                self._running[key] = predictor.start()
            except PredictorError:  # Never the sweep's end: not ready, and started again after a while.
                predictor.stop()
                self._backoff[key] = time.monotonic() + BACKOFF_SECONDS
                return False
            if self.prometheus is not None:
                namespace, pod = key.split("/")[:2]
                self.prometheus.add_target(_address(predictor), namespace=namespace, pod=f"{pod}-predictor")
        ready, _ = predictor.ready()
        return ready

    def _retire(self, key: str) -> None:
        predictor = self._running.pop(key)
        if self.prometheus is not None:
            self.prometheus.remove_target(_address(predictor))
        predictor.stop()

    def _mark_ready(self, service: dict[str, Any]) -> None:
        metadata = service["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        host = f"{metadata['name']}.{metadata['namespace']}"
        status = {
            "observedGeneration": metadata.get("generation", 1),
            "url": f"http://{host}.example.com",
            "address": {"url": f"http://{metadata['name']}-predictor.{metadata['namespace']}.svc.cluster.local"},
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": now} for kind in ("PredictorReady", "Ready")
            ],
        }
        path = f"{INFERENCE_SERVICES}/namespaces/{metadata['namespace']}/inferenceservices/{metadata['name']}/status"
        try:
            self._request("PATCH", path, {"status": status}, "application/merge-patch+json")
        except urllib.error.HTTPError as error:
            if error.code != 404:  # Deleted meanwhile.
                raise


def _address(predictor: Predictor) -> str:
    return predictor.url.removeprefix("http://")


def _ready(service: dict[str, Any]) -> bool:
    status = service.get("status") or {}
    if status.get("observedGeneration") != service["metadata"].get("generation", 1):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
