"""Istio: a VirtualService with weighted destinations, and mirror plus mirrorPercentage for shadow traffic."""

from __future__ import annotations

from typing import Any

from steward_operator.children import Owner, owned
from steward_operator.kinds import Kind
from steward_operator.traffic.base import Backend, Split, parent

VIRTUAL_SERVICE = Kind("networking.istio.io/v1", "VirtualService", "virtualservices")


class Istio:
    name = "istio"
    kinds: tuple[Kind, ...] = (VIRTUAL_SERVICE,)
    supports_shadow = True
    one_inference_service = False

    def routes(self, owner: Owner, split: Split) -> list[dict[str, Any]]:
        destinations = [_destination(split.incumbent, 100 - split.challenger_weight)]
        if split.challenger is not None:
            destinations.append(_destination(split.challenger, split.challenger_weight))
        route: dict[str, Any] = {"name": "steward", "route": destinations}
        if split.challenger is not None and split.shadow_percent:
            route["mirror"] = {"host": split.challenger.host, "port": {"number": split.challenger.port}}
            route["mirrorPercentage"] = {"value": float(split.shadow_percent)}
        hosts = list(owner.traffic.hostnames) or [f"{owner.name}.{owner.namespace}.svc.cluster.local"]
        spec: dict[str, Any] = {"hosts": hosts, "http": [route]}
        gateway = parent(owner.traffic.gateway, owner.namespace)
        if gateway:
            spec["gateways"] = [f"{gateway[0]}/{gateway[1]}"]
        return [owned(owner, VIRTUAL_SERVICE, spec)]

    def predictor_patch(self, split: Split) -> dict[str, Any]:
        return {}


def _destination(backend: Backend, weight: int) -> dict[str, Any]:
    return {"destination": {"host": backend.host, "port": {"number": backend.port}}, "weight": weight}
