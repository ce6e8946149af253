"""Traefik: a weighted TraefikService splits traffic between the versions and a mirroring one in front of it copies
a share to the challenger; an HTTPRoute on a Gateway, or else an IngressRoute (k3s' default), leads to them."""

from __future__ import annotations

import re
from typing import Any

from steward_operator import specs
from steward_operator.children import Owner, owned
from steward_operator.kinds import Kind
from steward_operator.traffic.base import Backend, Split, parent
from steward_operator.traffic.gateway_api import HTTP_ROUTE

TRAEFIK_SERVICE = Kind("traefik.io/v1alpha1", "TraefikService", "traefikservices")
INGRESS_ROUTE = Kind("traefik.io/v1alpha1", "IngressRoute", "ingressroutes")


class Traefik:
    name = "traefik"
    kinds: tuple[Kind, ...] = (TRAEFIK_SERVICE, INGRESS_ROUTE, HTTP_ROUTE)
    supports_shadow = True
    one_inference_service = False

    def routes(self, owner: Owner, split: Split) -> list[dict[str, Any]]:
        # The entry route names the mirroring service from the first apply on, whatever the stage: a stage
        # changes what the two TraefikServices hold, never what the route points at.
        weighted = owned(owner, TRAEFIK_SERVICE, {"weighted": {"services": _shares(split)}})
        weighted["metadata"]["name"] = f"{owner.name}--split"
        mirroring: dict[str, Any] = {"kind": "TraefikService", "name": weighted["metadata"]["name"]}
        if split.challenger is not None and split.shadow_percent:
            mirroring["mirrors"] = [{**_service(split.challenger), "percent": split.shadow_percent}]
        entry = owned(owner, TRAEFIK_SERVICE, {"mirroring": mirroring})
        return [weighted, entry, _route(owner)]

    def predictor_patch(self, split: Split) -> dict[str, Any]:
        return {}


def _shares(split: Split) -> list[dict[str, Any]]:
    """The versions that take a share of live traffic. One without a share is left out: Traefik drops a whole
    TraefikService when any Service it names is missing or has no ready endpoint, and a challenger's Service
    is only there once KServe made it."""
    shares = [(split.incumbent, 100 - split.challenger_weight), (split.challenger, split.challenger_weight)]
    return [{**_service(backend), "weight": weight} for backend, weight in shares if backend is not None and weight]


def _service(backend: Backend) -> dict[str, Any]:
    return {"name": backend.service, "kind": "Service", "port": backend.port}


def _route(owner: Owner) -> dict[str, Any]:
    """What leads requests to the mirroring TraefikService: an HTTPRoute attached to spec.rollout.traffic.gateway
    (Traefik's Gateway API provider), or else an IngressRoute for spec.rollout.traffic.hostnames."""
    target = {"name": owner.name, "kind": "TraefikService"}
    hostnames = list(owner.traffic.hostnames)
    gateway = parent(owner.traffic.gateway, owner.namespace)
    if gateway is not None:
        spec: dict[str, Any] = {
            "parentRefs": [{"name": gateway[1], "namespace": gateway[0]}],
            "rules": [{"backendRefs": [{"group": "traefik.io", **target}]}],
        }
        if hostnames:
            spec["hostnames"] = hostnames
        return owned(owner, HTTP_ROUTE, spec)
    if not hostnames:
        # The CRD refuses this: an IngressRoute without a host would take every request of its entrypoints.
        raise ValueError("the traefik provider needs spec.rollout.traffic.gateway or spec.rollout.traffic.hostnames")
    rule = {"kind": "Rule", "match": " || ".join(map(_host_matcher, hostnames)), "services": [target]}
    return owned(owner, INGRESS_ROUTE, {"routes": [rule]})


def _host_matcher(hostname: str) -> str:
    """A Traefik rule matching `hostname` as Traefik's Gateway API provider matches an HTTPRoute's: *.example.com
    matches any name below example.com, not example.com itself."""
    if not re.fullmatch(specs.HOSTNAME, hostname):
        # Anything else could close the backquotes and widen the rule; the CRD refuses it.
        raise ValueError(f"not a DNS host name: {hostname!r}")
    if hostname.startswith("*."):
        suffix = hostname[2:].replace(".", r"\.")
        return f"HostRegexp(`^[a-z0-9.-]+\\.{suffix}$`)"
    return f"Host(`{hostname}`)"
