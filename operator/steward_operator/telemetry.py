"""The operator's own Prometheus metrics: reconciles, errors, durations, and each ModelDeployment's phase and
traffic split."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

from steward_contracts.metrics import (
    OPERATOR_DECISIONS,
    OPERATOR_PHASE,
    OPERATOR_RECONCILE_DURATION,
    OPERATOR_RECONCILES,
    OPERATOR_TRAFFIC_RATIO,
)
from steward_operator import specs

PHASES: tuple[specs.Phase, ...] = (
    "Pending",
    "Stable",
    "Validating",
    "Shadowing",
    "Canary",
    "Promoted",
    "RolledBack",
    "Failed",
)
ROLES = ("incumbent", "challenger", "shadow")

RECONCILES = Counter(
    OPERATOR_RECONCILES.name,
    "ModelDeployment reconciles, by result (ok, conflict, error).",
    OPERATOR_RECONCILES.labels,
)
RECONCILE_SECONDS = Histogram(
    OPERATOR_RECONCILE_DURATION.name,
    "Time to reconcile one ModelDeployment: observe, decide, apply, record.",
    OPERATOR_RECONCILE_DURATION.labels,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DECISIONS = Counter(
    OPERATOR_DECISIONS.name,
    "Decisions taken (each also a Kubernetes Event), by reason.",
    OPERATOR_DECISIONS.labels,
)
PHASE = Gauge(
    OPERATOR_PHASE.name, "1 for the phase each ModelDeployment is in, 0 for the others.", OPERATOR_PHASE.labels
)
TRAFFIC = Gauge(
    OPERATOR_TRAFFIC_RATIO.name,
    "Share of live requests each role receives (shadow: share mirrored to the challenger), 0-1.",
    OPERATOR_TRAFFIC_RATIO.labels,
)


def observe(namespace: str, name: str, status: specs.ModelDeploymentStatus) -> None:
    """Record a ModelDeployment's phase and traffic split as status now has them."""
    for phase in PHASES:
        PHASE.labels(namespace, name, phase).set(1 if status.phase == phase else 0)
    weights = status.weights or specs.Weights()
    for role in ROLES:
        TRAFFIC.labels(namespace, name, role).set(getattr(weights, role) / 100)


def forget(namespace: str, name: str) -> None:
    """Drop a deleted ModelDeployment's series."""
    for gauge, values in ((PHASE, PHASES), (TRAFFIC, ROLES)):
        for value in values:
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name, value)
