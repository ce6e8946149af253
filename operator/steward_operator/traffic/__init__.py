"""Traffic providers: how a split between the incumbent and the challenger, and a shadow mirror, become route
objects for one traffic layer. One module per provider; `provider(name)` picks one."""

from __future__ import annotations

from steward_operator.kinds import Kind
from steward_operator.traffic.base import Backend, Split, TrafficProvider, UnknownProviderError
from steward_operator.traffic.gateway_api import GatewayApi
from steward_operator.traffic.istio import Istio
from steward_operator.traffic.kserve import KServe
from steward_operator.traffic.traefik import Traefik

_PROVIDERS: dict[str, type[TrafficProvider]] = {
    "gateway-api": GatewayApi,
    "istio": Istio,
    "kserve": KServe,
    "traefik": Traefik,
}

__all__ = ["Backend", "Split", "TrafficProvider", "UnknownProviderError", "provider", "route_kinds"]


def provider(name: str) -> TrafficProvider:
    """The provider named in spec.rollout.traffic.provider."""
    try:
        return _PROVIDERS[name]()
    except KeyError:
        known = ", ".join(_PROVIDERS)
        raise UnknownProviderError(f"unknown traffic provider {name!r}: expected one of {known}") from None


def route_kinds() -> tuple[Kind, ...]:
    """Every kind of route object some provider makes."""
    return tuple(dict.fromkeys(kind for found in _PROVIDERS.values() for kind in found.kinds))
