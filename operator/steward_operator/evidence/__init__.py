"""The evidence releases are judged on: what each model version served in a window of time, read from a metrics
system by a metric provider. One module per provider; `metric_provider(name, url)` picks one."""

from __future__ import annotations

from collections.abc import Callable

from steward_operator.evidence.base import (
    ArmCounts,
    Gateway,
    HeldOutResults,
    MetricProvider,
    MetricsUnavailableError,
    Quality,
    UnknownProviderError,
)
from steward_operator.evidence.prometheus import Prometheus

_PROVIDERS: dict[str, Callable[[str], MetricProvider]] = {"prometheus": Prometheus}

__all__ = [
    "ArmCounts",
    "Gateway",
    "HeldOutResults",
    "MetricProvider",
    "MetricsUnavailableError",
    "Quality",
    "UnknownProviderError",
    "metric_provider",
]


def metric_provider(name: str, url: str) -> MetricProvider:
    """The provider called `name`, reading from the metrics system at `url`."""
    try:
        make = _PROVIDERS[name]
    except KeyError:
        known = ", ".join(_PROVIDERS)
        raise UnknownProviderError(f"unknown metric provider {name!r}: expected one of {known}") from None
    return make(url)
