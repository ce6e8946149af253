"""The one small interface every serving mode implements, and the values it plans with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from steward_operator import specs
from steward_operator.children import Owner
from steward_operator.evidence.base import Gateway
from steward_operator.kinds import Kind
from steward_operator.stages import Layout


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

    serving: list[dict[str, Any]] = field(default_factory=list)
    """What serves the live versions (InferenceServices, a stream's StatefulSet, CronJobs), and the retraining
    CronJob."""
    routes: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The planned children of one kind."""
        return [child for child in [*self.serving, *self.routes] if child["kind"] == kind]


class ServingMode(Protocol):
    name: str
    """The value of spec.serving.mode that selects this mode."""
    layout: Layout
    """The release stages it supports: whether live traffic is split in canary steps, and whether a shadow stage
    is always taken."""
    evidence: Literal["scrapes", "runs"]
    """What its live stages are judged on. scrapes: its predictors' metrics, scraped while they serve, and versions
    are pinned to the bundle digest they report. runs: its challenger's runs, each scoring the same input with both
    versions and leaving the comparison in its termination message (held-out results for Validating too)."""
    lags: bool
    """Whether its workers read a queue and report how far each version is behind it (status.lag)."""
    children: tuple[Kind, ...]
    """The kinds of child it makes, each watched: a change to one (it became ready, say) can move a release. The
    chart's ClusterRole must let the operator manage each."""

    def plan(self, owner: Owner, spec: specs.ModelDeploymentSpec, release: Release) -> Plan:
        """The children that serve `release`'s live versions, owned by `owner`."""
        ...

    def ready(self, child: dict[str, Any], answering: frozenset[str], *, current: bool) -> bool | None:
        """Whether `child` serves its version; None when it is no child of this mode. `answering` holds the
        Services with a ready endpoint; with `current` False, readiness for an older generation counts."""
        ...

    def answering_service(self, child: dict[str, Any]) -> str | None:
        """The Service whose endpoints tell whether `child` answers, when its own status cannot tell."""
        ...

    def gateway(self, model: str, namespace: str, version: str, spec: specs.ModelDeploymentSpec) -> Gateway | None:
        """Where the gateway in front of a version counts the requests it answered, if one does."""
        ...

    def describe_shadow(self, spec: specs.ModelDeploymentSpec) -> str:
        """The shadow stage, in words."""
        ...
