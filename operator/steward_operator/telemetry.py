"""The operator's own Prometheus metrics: reconciles, errors, durations, and each ModelDeployment's phase and
traffic split."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

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
    "steward_operator_reconciles_total", "ModelDeployment reconciles, by result (ok, conflict, error).", ["result"]
)
RECONCILE_SECONDS = Histogram(
    "steward_operator_reconcile_duration_seconds",
    "Time to reconcile one ModelDeployment: observe, decide, apply, record.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DECISIONS = Counter(
    "steward_operator_decisions_total", "Decisions taken (each also a Kubernetes Event), by reason.", ["reason"]
)
PHASE = Gauge(
    "steward_operator_phase",
    "1 for the phase each ModelDeployment is in, 0 for the others.",
    ["namespace", "name", "phase"],
)
TRAFFIC = Gauge(
    "steward_operator_traffic_ratio",
    "Share of live requests each role receives (shadow: share mirrored to the challenger), 0-1.",
    ["namespace", "name", "role"],
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
