"""The one small interface every traffic provider implements, and the values it works with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from steward_operator.children import Owner
from steward_operator.kinds import Kind


class UnknownProviderError(ValueError):
    """spec.rollout.traffic.provider names no provider this operator has."""


class ShadowNotSupportedError(ValueError):
    """A shadow mirror was asked of a provider that cannot mirror (the CRD refuses such manifests)."""


@dataclass(frozen=True)
class Backend:
    """A version's in-cluster Service: the predictor KServe runs for it."""

    service: str
    namespace: str
    port: int = 80

    @property
    def host(self) -> str:
        return f"{self.service}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class Split:
    """Where live traffic goes: the challenger's share in percent (the incumbent takes the rest), and the
    percent of requests mirrored to the challenger, whose answers are discarded."""

    incumbent: Backend
    challenger: Backend | None = None
    challenger_weight: int = 0
    shadow_percent: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.challenger_weight <= 100 or not 0 <= self.shadow_percent <= 100:
            raise ValueError(f"weights are percents: {self.challenger_weight=}, {self.shadow_percent=}")
        if self.challenger is None and (self.challenger_weight or self.shadow_percent):
            raise ValueError("a split with challenger weight or shadow needs a challenger")


@dataclass(frozen=True)
class MirrorRefusal:
    """Why the challenger must not be sent mirrored requests where its routes attach: the reason and message of
    the Stalled condition that holds the shadow stage, in words a person can act on."""

    reason: str
    message: str


class TrafficProvider(Protocol):
    name: str
    """The value of spec.rollout.traffic.provider that selects this provider."""
    kinds: tuple[Kind, ...]
    """The kinds of route object it makes (the chart's ClusterRole must let the operator manage each)."""
    supports_shadow: bool
    """Whether this provider can mirror requests to the challenger."""
    one_inference_service: bool
    """Whether both versions run as revisions of one InferenceService (KServe's canary) rather than one
    InferenceService each."""

    def routes(self, owner: Owner, split: Split) -> list[dict[str, Any]]:
        """The route objects that put `split` into effect, owned by `owner`; applying them twice changes nothing."""
        ...

    def predictor_patch(self, split: Split) -> dict[str, Any]:
        """Fields to set on the challenger's InferenceService predictor (KServe's own canary); usually none."""
        ...


def parent(gateway: str | None, namespace: str) -> tuple[str, str] | None:
    """(namespace, name) of the gateway in spec.rollout.traffic.gateway ("name" or "namespace/name")."""
    if not gateway:
        return None
    gateway_namespace, _, name = gateway.rpartition("/")
    return gateway_namespace or namespace, name
