"""spec.monitoring and spec.retraining: how a serving model is watched, and when it is retrained."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from steward_operator.specs.base import Cron, Duration, Metric, Model, cel, validations

# --- spec.monitoring ----------------------------------------------------------------------------------------


class Persistence(Model):
    """Alert only when k of the last m windows agree, so one noisy window does not page anyone."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.breaches <= self.windows", "breaches must not exceed windows", ".breaches")
        )
    )

    breaches: int = Field(2, ge=1, le=100)
    """k: windows that must breach."""
    windows: int = Field(3, ge=1, le=100)
    """m: windows looked at."""


class Drift(Model):
    """Data and prediction drift: PSI on the bundle's training bins, per feature and for predictions."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self.warn < self.alert", "warn must be below alert", ".warn"),
        )
    )

    enabled: bool = True
    """Watch for drift."""
    warn: float = Field(0.1, gt=0, le=10)
    """PSI at which a feature is reported as drifting."""
    alert: float = Field(0.25, gt=0, le=10)
    """PSI at which drift raises an alert (and, with retraining.onDrift, a retraining)."""
    window: Duration = "1h"
    """Length of each comparison window: the monitor judges this model's drift over the traffic of each window as
    it ends."""
    persistence: Persistence = Field(default_factory=Persistence)
    """How many windows must agree before an alert."""


class Outcome(Model):
    """Outcome monitoring: quality on labels that arrive later than the predictions."""

    metric: Metric
    """Quality metric computed on matured labels."""
    label_delay: Duration
    """How long after a prediction its label is expected; predictions younger than this are not judged."""
    min_labels: int = Field(200, ge=1)
    """Matured labels needed before quality is reported."""


class Monitoring(Model):
    """How the model is watched once it serves."""

    drift: Drift = Field(default_factory=Drift)
    """Data and prediction drift."""
    outcome: Outcome | None = None
    """Outcome quality on late labels. Unset: no outcome monitoring."""


# --- spec.retraining ----------------------------------------------------------------------------------------


class _Open(Model):
    """A Kubernetes type Steward passes through: the fields it relies on are checked, the rest kept as is."""

    model_config = ConfigDict(extra="allow")


class PodSpec(_Open):
    """A core/v1 PodSpec."""

    containers: list[dict[str, Any]] = Field(min_length=1)
    """The training containers."""


class PodTemplate(_Open):
    """A core/v1 PodTemplateSpec."""

    spec: PodSpec
    """The pod's spec."""


class JobSpec(_Open):
    """A batch/v1 JobSpec."""

    template: PodTemplate
    """The pod that runs the training."""


class JobTemplate(Model):
    """A batch/v1 Job template: the team's own training job."""

    metadata: dict[str, Any] | None = None
    """Labels and annotations for the Job."""
    spec: JobSpec
    """The Job's spec (batch/v1 JobSpec), with at least template.spec.containers."""


class Retraining(Model):
    """When the model must be retrained, and the Job that does it. A manual request is always possible."""

    job_template: JobTemplate
    """The Job to run. Steward adds the trigger's reason to its environment and annotations."""
    schedule: Cron | None = None
    """Retrain on a calendar, in cron format."""
    max_age: Duration | None = None
    """Retrain when the serving version is older than this."""
    on_drift: bool = False
    """Retrain on a sustained drift alert."""
    on_quality_drop: float | None = Field(None, gt=0, le=1)
    """Retrain when outcome quality is this fraction worse than the bundle's held-out result (0.1: 10% worse;
    needs monitoring.outcome)."""
    cooldown: Duration = "24h"
    """Shortest time between two automatic retrainings. Never two run at once."""
