"""The resources themselves: ModelDeployment (its spec and status) and ModelCommand."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from steward_operator.specs.base import Model, cel, validations
from steward_operator.specs.rollout import Rollout
from steward_operator.specs.serving import ModelRef, Owner, Serving
from steward_operator.specs.watching import Monitoring, Retraining

# --- spec -------------------------------------------------------------------------------------------------


class ModelDeploymentSpec(Model):
    """What the team wants: which model serves, how, how new versions prove themselves, and how it is
    watched. Owned by whoever applies it (a person or a GitOps tool); Steward never writes it."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.retraining) || !has(self.retraining.onQualityDrop) || has(self.monitoring.outcome)",
                "retraining.onQualityDrop needs monitoring.outcome to measure quality",
                ".retraining.onQualityDrop",
            ),
            cel(
                "!has(self.rollout.guardrails) || !self.rollout.guardrails.exists(g, g.name == 'outcome')"
                " || has(self.monitoring.outcome)"
                " && self.monitoring.outcome.metric in ['accuracy', 'logLoss', 'mae', 'rmse']",
                "the outcome guardrail needs monitoring.outcome, with a metric that is a mean over predictions"
                " (accuracy, logLoss, mae or rmse), to compare the versions on matured outcomes",
                ".rollout.guardrails",
            ),
            cel(
                "self.serving.mode == 'online' || self.rollout.traffic.provider == 'gateway-api'"
                " && !has(self.rollout.traffic.gateway)",
                "rollout.traffic only applies to online serving",
                ".rollout.traffic",
            ),
        )
    )

    owner: Owner
    """Who owns the model and how to reach them. Required: Steward refuses a model without an owner."""
    model: ModelRef
    """The model version and bundle to serve."""
    serving: Serving = Field(default_factory=Serving)
    """How predictions are served."""
    rollout: Rollout = Field(default_factory=Rollout)
    """How a new version proves itself before it replaces the incumbent."""
    monitoring: Monitoring = Field(default_factory=Monitoring)
    """How the serving model is watched."""
    retraining: Retraining | None = None
    """When to retrain. Unset: Steward never starts a retraining."""


# --- status -----------------------------------------------------------------------------------------------

Phase = Literal["Pending", "Stable", "Validating", "Shadowing", "Canary", "Promoted", "RolledBack", "Failed"]


class Condition(Model):
    """A standard Kubernetes condition (kstatus): Ready, Reconciling or Stalled, and Steward's own."""

    type: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)
    """Condition type, for example Ready."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    observed_generation: int | None = Field(None, ge=0)
    """metadata.generation this condition was computed from."""
    last_transition_time: datetime
    """When status last changed."""
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    """One CamelCase word saying why."""
    message: str = Field("", max_length=32768)
    """Human-readable details."""


class ServedVersion(Model):
    """A model version as it runs: version, bundle, digest and since when."""

    version: str
    """Model version."""
    bundle: str
    """Bundle URI."""
    digest: str | None = None
    """Digest of the bundle that was loaded."""
    since: datetime | None = None
    """When this version took its current role."""


class Weights(Model):
    """The traffic split in force."""

    incumbent: int = Field(100, ge=0, le=100)
    """Percent of live traffic answered by the incumbent."""
    challenger: int = Field(0, ge=0, le=100)
    """Percent of live traffic answered by the challenger."""
    shadow: int = Field(0, ge=0, le=100)
    """Percent of live requests mirrored to the challenger (answers discarded)."""


class Evidence(Model):
    """One metric's comparison between the challenger and the incumbent."""

    metric: str
    """What was compared, for example errorRate."""
    incumbent: float | None = None
    """The incumbent's estimate."""
    challenger: float | None = None
    """The challenger's estimate."""
    lower: float | None = None
    """Lower confidence bound of the difference (challenger - incumbent)."""
    upper: float | None = None
    """Upper confidence bound of the difference."""
    incumbent_samples: int | None = Field(None, ge=0)
    """Observations behind the incumbent's estimate."""
    challenger_samples: int | None = Field(None, ge=0)
    """Observations behind the challenger's estimate."""
    verdict: Literal["pass", "fail", "inconclusive", "noData"]
    """What this comparison says on its own."""


class Analysis(Model):
    """A decision and the evidence behind it."""

    time: datetime
    """When the decision was taken."""
    phase: Phase
    """Phase the release was in."""
    decision: Literal["continue", "advance", "promote", "rollback", "pause", "hold"]
    """What was decided."""
    rule: str
    """The rule that fired, in words."""
    evidence: list[Evidence] = Field(default_factory=list, max_length=64)
    """Per-metric comparisons."""


class RetrainingRun(Model):
    """One retraining Job Steward started, why, and how it ended."""

    job: str = Field(max_length=63)
    """The Job's name."""
    reason: Literal["maxAge", "drift", "qualityDrop", "manual"]
    """The trigger that started it."""
    message: str = Field("", max_length=1024)
    """The trigger, in words, with its numbers."""
    version: str
    """The version serving when it started."""
    started: datetime
    """When Steward created the Job."""
    finished: datetime | None = None
    """When Steward saw it end."""
    outcome: Literal["running", "succeeded", "failed"] = "running"
    """How it ended, from the Job's conditions; a Job deleted before it was seen to end counts as failed."""


class Lag(Model):
    """How far a live version of a stream is behind, as its workers last reported."""

    version: str
    """The live version (the incumbent, or the challenger during a release)."""
    records: int = Field(ge=0)
    """Records of the input topic the version has yet to score, over every partition."""
    partitions: int = Field(0, ge=0)
    """The input topic's partitions its workers own: more workers than this stand idle."""
    observed_at: datetime
    """When the workers' metrics were read."""


class HistoryEntry(Model):
    """A version that served, and how its time ended."""

    version: str
    """Model version."""
    bundle: str
    """Bundle URI."""
    digest: str | None = None
    """Digest of the bundle that served."""
    started: datetime
    """When it started serving all traffic."""
    ended: datetime | None = None
    """When it stopped. Unset while it still serves."""
    outcome: Literal["serving", "replaced", "rolledBack", "aborted"] = "serving"
    """How its time ended."""


Action = Literal["promote", "promoteFull", "abort", "retry", "pause", "resume", "rollback", "retrain"]
"""What a command asks for."""


class Operation(Model):
    """The latest manual command, as the operator took it from its ModelCommand."""

    action: Action
    """The command."""
    to_version: str | None = None
    """Target version, for rollback."""
    requested_at: datetime
    """When it was requested; a newer request replaces an older one."""
    requested_by: str | None = None
    """Who asked."""
    handled_at: datetime | None = None
    """When Steward carried it out or refused it. Unset while it waits; a new command is written without it."""
    result: str | None = Field(None, max_length=1024)
    """What Steward made of it, in words."""
    command: str | None = Field(None, max_length=253)
    """The ModelCommand it came from."""


class ModelDeploymentStatus(Model):
    """What Steward observes and decides. Written only by the operator: rollback targets are taken from here, so
    no user role may write the status subresource (commands travel as ModelCommands)."""

    observed_generation: int | None = Field(None, ge=0)
    """metadata.generation the status reflects."""
    phase: Phase | None = None
    """Stable, or where the release stands: Validating, Shadowing, Canary, Promoted, RolledBack."""
    paused: bool = False
    """A manual pause is in force: no automatic step is taken."""
    incumbent: ServedVersion | None = None
    """The version serving most traffic."""
    challenger: ServedVersion | None = None
    """The version being proven, during a release."""
    rolled_back: ServedVersion | None = None
    """The version last rolled back. Steward does not release it again until `kubectl steward retry` or a new
    spec.model."""
    canary_step: int | None = Field(None, ge=0)
    """Index into rollout.canary.steps of the current step, during the canary phase."""
    stage_started: datetime | None = None
    """When the release entered its current stage (Validating, Shadowing, a canary step): the evidence for
    the stage is counted from here."""
    weights: Weights | None = None
    """The traffic split in force."""
    last_analysis: Analysis | None = None
    """The latest decision and its evidence."""
    history: list[HistoryEntry] = Field(default_factory=list, max_length=100)
    """Versions that served, newest last."""
    operation: Operation | None = None
    """The latest manual command."""
    retrainings: list[RetrainingRun] = Field(default_factory=list, max_length=20)
    """Retraining Jobs Steward started, newest last."""
    lag: list[Lag] | None = Field(
        None,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["version"]},
    )
    """Streaming: how far each live version is behind the input topic, when its workers' metrics can be read."""
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready, Reconciling and Stalled (kstatus), and Steward's own."""


class ModelDeployment(Model):
    """A machine-learning model served, proven and watched on Kubernetes."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.metadata.name.size() <= 40",
                "metadata.name must be at most 40 characters: child objects append the version",
            ),
            cel(
                "!self.metadata.name.contains('--')",
                "metadata.name must not contain '--': child objects are named <name>--<version>",
            ),
        )
    )

    api_version: Literal["steward.dev/v1alpha1"] = "steward.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)


# --- ModelCommand ---------------------------------------------------------------------------------------------


class ModelCommandSpec(Model):
    """What is asked of one ModelDeployment. A command cannot be changed once sent: send a new one."""

    model_deployment: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    """The ModelDeployment, in this namespace."""
    action: Action
    """promote, promoteFull, abort, retry, pause, resume, rollback or retrain."""
    to_version: str | None = Field(None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
    """For rollback: the version to switch back to, which must be in the ModelDeployment's history. Unset: the
    version served before the incumbent."""
    requested_by: str | None = Field(None, max_length=256)
    """Who asked. With the chart's admission policy in place, the API server refuses any name but the sender's
    own."""


class ModelCommandStatus(Model):
    """What the operator made of the command. Written only by the operator."""

    outcome: Literal["Done", "Refused"] | None = None
    """Done, or Refused with the reason in result. Unset while the command waits."""
    handled_at: datetime | None = None
    """When the operator carried it out or refused it."""
    result: str | None = Field(None, max_length=1024)
    """What the operator made of it, in words."""


class ModelCommand(Model):
    """A manual command for a ModelDeployment (kubectl steward promote, abort, rollback ...): who may send one is
    granted apart from who may edit ModelDeployments, and no one but the operator writes a ModelDeployment's
    status."""

    api_version: Literal["steward.dev/v1alpha1"] = "steward.dev/v1alpha1"
    kind: Literal["ModelCommand"] = "ModelCommand"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelCommandSpec = Field(
        json_schema_extra=validations(cel("self == oldSelf", "a command cannot be changed once sent: send a new one"))
    )
    status: ModelCommandStatus = Field(default_factory=ModelCommandStatus)
