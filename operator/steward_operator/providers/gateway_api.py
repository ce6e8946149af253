"""Gateway API: an HTTPRoute with weighted backends, and a RequestMirror filter for shadow traffic."""

from __future__ import annotations

from typing import Any

from steward_operator.providers.base import Backend, Owner, Split, owned, parent


class GatewayApi:
    name = "gateway-api"
    supports_shadow = True
    one_inference_service = False

    def routes(self, owner: Owner, split: Split) -> list[dict[str, Any]]:
        backends = [_backend(split.incumbent, 100 - split.challenger_weight)]
        if split.challenger is not None:
            backends.append(_backend(split.challenger, split.challenger_weight))
        rule: dict[str, Any] = {"backendRefs": backends}
        if split.challenger is not None and split.shadow_percent:
            rule["filters"] = [
                {
                    "type": "RequestMirror",
                    "requestMirror": {
                        "backendRef": {"name": split.challenger.service, "port": split.challenger.port},
                        "percent": split.shadow_percent,
                    },
                }
            ]
        spec: dict[str, Any] = {"rules": [rule]}
        gateway = parent(owner.traffic.gateway, owner.namespace)
        if gateway:
            spec["parentRefs"] = [{"name": gateway[1], "namespace": gateway[0]}]
        if owner.traffic.hostnames:
            spec["hostnames"] = list(owner.traffic.hostnames)
        return [owned(owner, "gateway.networking.k8s.io/v1", "HTTPRoute", spec)]

    def predictor_patch(self, split: Split) -> dict[str, Any]:
        return {}


def _backend(backend: Backend, weight: int) -> dict[str, Any]:
    return {"name": backend.service, "port": backend.port, "weight": weight}
