"""The predictor's settings, read once from the environment the operator sets (steward_contracts.environment names
what it sets); command-line flags override."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from steward_contracts import environment, metrics
from steward_predictor.defaults import DEFAULT_URI

VARIANTS = metrics.VARIANTS
# An online request of 10,000 rows of a few dozen features is a few MiB of JSON, parsed and scored in well under a
# second; more than that is a batch job.
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_ROWS = 10_000


def allow_pickle() -> bool:
    """STEWARD_ALLOW_PICKLE: load a pickled pipeline (1, true or yes)."""
    return os.environ.get("STEWARD_ALLOW_PICKLE", "").strip().lower() in {"1", "true", "yes"}


def trusted_types() -> tuple[str, ...]:
    """STEWARD_TRUSTED_TYPES: extra types a skops pipeline may contain, comma-separated."""
    return tuple(name.strip() for name in os.environ.get(environment.TRUSTED_TYPES, "").split(",") if name.strip())


def whole_number(variable: str, default: int) -> int:
    """A positive whole number from the environment variable `variable`, or `default` when it is unset."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"{variable} must be a positive whole number, not {text!r}")
    return int(text)


def drift_thresholds_set() -> dict[str, float]:
    """STEWARD_DRIFT_WARN, _ALERT, _BREACHES, _WINDOWS: those that are set and are numbers."""
    found = {}
    for name in metrics.DRIFT_THRESHOLDS:
        try:
            found[name] = float(os.environ[environment.drift_threshold(name)])
        except (KeyError, ValueError):
            continue
    return found


@dataclass(frozen=True)
class Settings:
    bundle_uri: str = field(default_factory=lambda: os.environ.get("STEWARD_BUNDLE_URI", DEFAULT_URI))
    """Where the bundle is: KServe's storage initializer puts it at /mnt/models."""
    bundle_digest: str | None = field(default_factory=lambda: os.environ.get(environment.BUNDLE_DIGEST) or None)
    """spec.model.digest: the server stays not-ready unless the bundle's manifest has this digest."""
    model_version: str | None = field(default_factory=lambda: os.environ.get(environment.MODEL_VERSION) or None)
    """spec.model.version: the server stays not-ready unless the bundle holds this version."""
    variant: str = field(default_factory=lambda: os.environ.get(environment.VARIANT, "incumbent"))
    """incumbent, challenger or shadow: the role of this server in a release; a label on every metric."""
    allow_pickle: bool = field(default_factory=allow_pickle)
    """Load a pickled pipeline. Pickle can run any code: only for bundles from a source you trust."""
    trusted_types: tuple[str, ...] = field(default_factory=trusted_types)
    """Extra types a skops pipeline may contain (a team's own transformers), comma-separated."""
    monitor_url: str | None = field(default_factory=lambda: os.environ.get(environment.MONITOR_URL) or None)
    """The monitor every prediction is reported to (its base URL); unset: none are."""
    monitor_token: str | None = field(default_factory=lambda: os.environ.get(environment.MONITOR_TOKEN) or None)
    """The bearer token the monitor takes this model's predictions with (scoped to its namespace and model; the
    operator passes it from a Secret). Unset: the monitor refuses the reports."""
    namespace: str = field(default_factory=lambda: os.environ.get(environment.NAMESPACE, ""))
    """The namespace of the ModelDeployment, which the monitor files predictions under."""
    drift_thresholds: dict[str, float] = field(default_factory=drift_thresholds_set)
    """spec.monitoring.drift as the operator passes it on (warn, alert, breaches, windows), published for the
    monitor, which judges this version's drift by them."""
    max_body_bytes: int = field(default_factory=lambda: whole_number("STEWARD_MAX_BODY_BYTES", MAX_BODY_BYTES))
    """STEWARD_MAX_BODY_BYTES: the largest request body accepted; a larger one is refused (413) before it is read
    whole. KServe parses a body on the event loop, so this also bounds how long one request holds up the others."""
    max_rows: int = field(default_factory=lambda: whole_number("STEWARD_MAX_ROWS", MAX_ROWS))
    """STEWARD_MAX_ROWS: the most rows one request may hold; more are refused (400) before any is validated.
    Larger inputs are what batch scoring is for."""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {self.variant!r}")
        for name in ("max_body_bytes", "max_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
