"""The evidence releases are judged on: what each model version served in a window of time, read from a metrics
system by a metric provider. One module per provider; `metric_provider(name, url)` picks one, and only then imports
it, so the pure modules that read the evidence's types never load a metrics system's client."""

from __future__ import annotations

import importlib

from steward_operator.evidence.base import (
    ArmCounts,
    Behind,
    Gateway,
    HeldOutResults,
    Losses,
    MetricProvider,
    MetricsUnavailableError,
    MonitorSource,
    Outcomes,
    PairCounts,
    Quality,
    UnknownProviderError,
)

# Each provider's class, as module:attribute.
_PROVIDERS = {"prometheus": "steward_operator.evidence.prometheus:Prometheus"}

__all__ = [
    "ArmCounts",
    "Behind",
    "Gateway",
    "HeldOutResults",
    "Losses",
    "MetricProvider",
    "MetricsUnavailableError",
    "MonitorSource",
    "Outcomes",
    "PairCounts",
    "Quality",
    "UnknownProviderError",
    "metric_provider",
]


def metric_provider(name: str, url: str) -> MetricProvider:
    """The provider called `name`, reading from the metrics system at `url`."""
    try:
        module, attribute = _PROVIDERS[name].split(":")
    except KeyError:
        known = ", ".join(_PROVIDERS)
        raise UnknownProviderError(f"unknown metric provider {name!r}: expected one of {known}") from None
    provider: MetricProvider = getattr(importlib.import_module(module), attribute)(url)
    return provider
