"""Gateway API: an HTTPRoute with weighted backends, and a RequestMirror filter for shadow traffic once the parent
Gateway's implementation declares that it mirrors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steward_operator.children import Owner, owned
from steward_operator.kinds import Kind
from steward_operator.traffic.base import Backend, MirrorRefusal, Split, parent

# Gateway API's feature names (its pkg/features), as a GatewayClass's status.supportedFeatures lists them.
HTTP_ROUTE = Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes")
MIRROR = "HTTPRouteRequestMirror"
PERCENTAGE_MIRROR = "HTTPRouteRequestPercentageMirror"


class GatewayApi:
    name = "gateway-api"
    kinds: tuple[Kind, ...] = (HTTP_ROUTE,)
    supports_shadow = True
    one_inference_service = False

    def routes(self, owner: Owner, split: Split) -> list[dict[str, Any]]:
        backends = [_backend(split.incumbent, 100 - split.challenger_weight)]
        if split.challenger is not None:
            backends.append(_backend(split.challenger, split.challenger_weight))
        rule: dict[str, Any] = {"backendRefs": backends}
        if split.challenger is not None and split.shadow_percent:
            mirror: dict[str, Any] = {"backendRef": {"name": split.challenger.service, "port": split.challenger.port}}
            if split.shadow_percent < 100:
                # Left out at 100 (the default): an implementation that mirrors, but not a share, can take it.
                mirror["percent"] = split.shadow_percent
            rule["filters"] = [{"type": "RequestMirror", "requestMirror": mirror}]
        spec: dict[str, Any] = {"rules": [rule]}
        gateway = parent(owner.traffic.gateway, owner.namespace)
        if gateway:
            spec["parentRefs"] = [{"name": gateway[1], "namespace": gateway[0]}]
        if owner.traffic.hostnames:
            spec["hostnames"] = list(owner.traffic.hostnames)
        return [owned(owner, HTTP_ROUTE, spec)]

    def predictor_patch(self, split: Split) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class GatewayClass:
    """What implements the Gateway a route attaches to, as read from the cluster: the GatewayClass, its
    controller and the features its status declares; or why that could not be read."""

    gateway: str
    """The parent Gateway, namespace/name."""
    name: str = ""
    controller: str = ""
    features: frozenset[str] = frozenset()
    unreadable: str = ""
    """Why the Gateway or its GatewayClass could not be read; empty when both were."""

    @classmethod
    def read(cls, gateway: str, found: dict[str, Any] | None, gateway_class: dict[str, Any] | None) -> GatewayClass:
        """What `gateway` runs on, from the Gateway and GatewayClass objects read (None: there was none).
        status.supportedFeatures lists objects with a name (plain names in Gateway API's first experimental
        releases); anything else in it declares nothing."""
        if found is None:
            return cls(gateway, unreadable="there is no such Gateway (or Gateway API is not installed)")
        name = class_name(found)
        if gateway_class is None:
            return cls(gateway, name, unreadable=f"its GatewayClass {name!r} does not exist")
        listed = (gateway_class.get("status") or {}).get("supportedFeatures")
        items = listed if isinstance(listed, list) else []
        names = (item.get("name") if isinstance(item, dict) else item for item in items)
        return cls(
            gateway,
            name,
            controller=str((gateway_class.get("spec") or {}).get("controllerName", "")),
            features=frozenset(feature for feature in names if isinstance(feature, str)),
        )


def class_name(gateway: dict[str, Any] | None) -> str:
    """The GatewayClass a Gateway object names; empty for none."""
    return str(((gateway or {}).get("spec") or {}).get("gatewayClassName", ""))


def mirror_refusal(found: GatewayClass, percent: int) -> MirrorRefusal | None:
    """Why a RequestMirror filter of `percent` must not be written on routes attached to `found`'s Gateway, or None
    when its implementation declares what the filter needs. An implementation that does not mirror may answer
    every request of the route with an error while reporting it Accepted, so what is not declared is not
    written, and what cannot be read is not assumed."""
    skip = (
        "The release holds at the shadow stage, all traffic on the incumbent: where Traefik serves, switch"
        " spec.rollout.traffic.provider to traefik (it mirrors through a TraefikService); or skip the shadow"
        " stage with `kubectl steward promote`"
    )
    if found.unreadable:
        return MirrorRefusal(
            "MirroringUnverified",
            f"Steward cannot tell whether Gateway {found.gateway} mirrors requests: {found.unreadable}; it writes"
            f" no RequestMirror filter it cannot vouch for. {skip}",
        )
    needed = [MIRROR] + ([PERCENTAGE_MIRROR] if percent < 100 else [])
    missing = [feature for feature in needed if feature not in found.features]
    if not missing:
        return None
    return MirrorRefusal(
        "MirroringUnsupported",
        f"GatewayClass {found.name} of Gateway {found.gateway} (controller {found.controller or 'unnamed'}) does"
        f" not declare {' and '.join(missing)} in status.supportedFeatures: an implementation without it may fail"
        f" every request of a route that carries a RequestMirror filter, so Steward writes none. {skip}",
    )


def _backend(backend: Backend, weight: int) -> dict[str, Any]:
    return {"name": backend.service, "port": backend.port, "weight": weight}
