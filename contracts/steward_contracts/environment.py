"""The environment variables the operator sets in the pods it runs: a predictor's (its InferenceService, or a batch
CronJob running steward-predict), which the predictor reads, and a retraining Job's, which the team's own code
reads."""

from __future__ import annotations

# --- a predictor's --------------------------------------------------------------------------------------------------

MODEL_VERSION = "STEWARD_MODEL_VERSION"
"""spec.model.version: a predictor stays not-ready unless its bundle holds this version. A retraining Job is told
the version being served when it was triggered."""
VARIANT = "STEWARD_VARIANT"
"""incumbent, challenger or shadow (metrics.VARIANTS): the predictor's role in a release, a label on its metrics."""
BUNDLE_DIGEST = "STEWARD_BUNDLE_DIGEST"
"""spec.model.digest: a predictor stays not-ready unless its bundle's manifest has this digest."""
TRUSTED_TYPES = "STEWARD_TRUSTED_TYPES"
"""spec.model.trustedTypes, comma-separated: extra types a skops pipeline may contain."""
MONITOR_URL = "STEWARD_MONITOR_URL"
"""The monitor's base URL, which every prediction is reported to; unset: none are."""
MONITOR_TOKEN = "STEWARD_MONITOR_TOKEN"  # noqa: S105 -- the variable's name, not a token
"""The bearer token the monitor takes this ModelDeployment's predictions with."""
NAMESPACE = "STEWARD_NAMESPACE"
"""The ModelDeployment's namespace: the monitor files a predictor's predictions under it; a retraining Job is told
it."""


def drift_threshold(name: str) -> str:
    """The variable carrying one of spec.monitoring.drift's thresholds (metrics.DRIFT_THRESHOLDS: warn, alert,
    breaches, windows), e.g. STEWARD_DRIFT_WARN; the predictor publishes it for the monitor."""
    return f"STEWARD_DRIFT_{name.upper()}"


# --- a retraining Job's ---------------------------------------------------------------------------------------------

RETRAIN_REASON = "STEWARD_RETRAIN_REASON"
"""What triggered the retraining: maxAge, drift, qualityDrop or manual."""
RETRAIN_MESSAGE = "STEWARD_RETRAIN_MESSAGE"
"""The trigger's own words, at most 1,024 characters."""
MODEL = "STEWARD_MODEL"
"""The name of the ModelDeployment being retrained."""
