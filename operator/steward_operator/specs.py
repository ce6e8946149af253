"""Steward's API (steward.dev/v1alpha1), ModelDeployment and ModelCommand: the typed view of each resource, and
the source of its CRD.

Every field's docstring is its description in the CRD, so `kubectl explain` reads what is written here.
Rules that span several fields are CEL expressions attached to the class that holds them; the API server
enforces them, so a manifest that breaks one is refused before Steward ever sees it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict, JsonValue

GROUP = "steward.dev"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SHORT_NAMES = ["md", "mdep"]
COMMAND_KIND = "ModelCommand"
COMMAND_PLURAL = "modelcommands"
COMMAND_SHORT_NAMES = ["mcmd"]

_DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Five cron fields, or one of the @-macros a CronJob accepts.
_CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"

Duration = Annotated[str, Field(pattern=_DURATION_PATTERN, max_length=32)]
"""A Go-style duration such as 90s, 15m, 1h30m or 168h."""
Cron = Annotated[str, Field(pattern=_CRON_PATTERN, max_length=128)]
Percent = Annotated[int, Field(ge=1, le=100)]
Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")]
HOSTNAME = r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
"""Gateway API's hostname syntax: lowercase DNS labels, the first of which may be the wildcard *."""
Uri = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^([a-z][a-z0-9+.-]*://\S+|/\S*)$")]
Quantity = Annotated[
    str,
    Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$", max_length=32),
]
_PYTHON_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
Metric = Literal["accuracy", "rocAuc", "logLoss", "mae", "rmse", "r2"]


def seconds(duration: str) -> float:
    """The length of a Duration in seconds."""
    if not re.fullmatch(_DURATION_PATTERN, duration):
        raise ValueError(f"not a duration: {duration!r} (expected e.g. 90s, 15m, 1h30m)")
    return sum(
        float(n) * _DURATION_UNITS[unit] for n, _, unit in re.findall(r"([0-9]+(\.[0-9]+)?)(ms|s|m|h)", duration)
    )


def as_timedelta(duration: str) -> timedelta:
    return timedelta(seconds=seconds(duration))


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> JsonDict:
    """One CEL rule for the API server to enforce; `field_path` points the error at the offending field."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def validations(*rules: JsonDict) -> JsonDict:
    """The x-kubernetes-validations of a schema node."""
    entries: list[JsonValue] = [*rules]
    return {"x-kubernetes-validations": entries}


class Model(BaseModel):
    """Base of every part of the resource: camelCase on the wire, immutable once parsed."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        use_attribute_docstrings=True,
        # A newer CRD may carry fields this operator does not know yet; ignoring them beats crashing.
        extra="ignore",
    )


# --- spec.owner, spec.model ---------------------------------------------------------------------------------


class Owner(Model):
    """Who answers for this model in production."""

    team: str = Field(min_length=1, max_length=128)
    """Team that owns the model, for example growth-ml."""
    contact: str = Field(min_length=1, max_length=256)
    """Where to reach the team when the model misbehaves: an e-mail address, a chat channel or a pager alias."""
    runbook: str = Field(pattern=r"^https?://\S+$", max_length=2048)
    """URL of the runbook that on-call follows for this model (http or https)."""


class ModelRef(Model):
    """The model version to serve and the sealed bundle that holds it (pipeline, feature schema, baselines)."""

    version: Label
    """Version of the model, for example 2024-06-01 or v7. Used in labels and child names: at most 63 characters,
    letters, digits, '.', '_' and '-'. Changing it starts a release."""
    bundle: Uri
    """URI of the model bundle: s3://, gs://, pvc://, https:// or file:// (or an absolute path in the image).
    KServe's storage initializer places it at /mnt/models in the predictor."""
    digest: str | None = Field(None, pattern=r"^sha256:[a-f0-9]{64}$")
    """Optional sha256 digest of the bundle manifest (sha256:<64 hex digits>). When set, the predictor refuses
    to become ready if the bundle it loaded does not match. Unset: Steward pins the version to the digest its
    predictors first report (while it is validated, for a new version), and every later replica must match it."""
    trusted_types: list[Annotated[str, Field(pattern=_PYTHON_NAME, max_length=256)]] = Field(
        default_factory=list, max_length=32
    )
    """Types the bundle's pipeline holds beyond those Steward trusts (scikit-learn's estimators and transformers,
    and its trees once checked): a team's own transformer or function, by its full name (features.clean_text).
    Loading one runs its code, so name only what you reviewed."""


# --- spec.serving -------------------------------------------------------------------------------------------


class ResourceList(Model):
    """Amounts of compute resources."""

    cpu: Quantity | None = None
    """CPU, in cores or millicores (500m)."""
    memory: Quantity | None = None
    """Memory, in bytes with an optional suffix (512Mi, 2Gi)."""


class Resources(Model):
    """Compute resources of each predictor replica."""

    requests: ResourceList | None = None
    """What the scheduler reserves for each replica."""
    limits: ResourceList | None = None
    """The most each replica may use."""


class OnlineServing(Model):
    """Settings for online serving: a KServe InferenceService behind an HTTP API."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.maxReplicas >= self.minReplicas",
                "maxReplicas must be greater than or equal to minReplicas",
                ".maxReplicas",
            )
        )
    )

    min_replicas: int = Field(1, ge=0, le=1000)
    """Fewest predictor replicas per live version (0 allows scale to zero)."""
    max_replicas: int = Field(3, ge=1, le=1000)
    """Most predictor replicas per live version."""
    protocol: Literal["v1", "v2"] = "v2"
    """Inference protocol clients speak: v1 (KServe V1, `instances`) or v2 (Open Inference Protocol). The
    predictor serves both; this sets the protocol KServe advertises and health checks use."""
    resources: Resources | None = None
    """CPU and memory for each replica. Unset, the cluster's defaults apply."""


class DataLocation(Model):
    """Where a batch reads or writes rows."""

    uri: Uri
    """A file or prefix (s3://bucket/scores/, file:///data/in.parquet) or a database URL
    (postgresql://host/db). Credentials belong in credentialsSecret, never in the URI."""
    format: Literal["csv", "parquet", "sql"] | None = None
    """Data format. Unset, it is inferred from the URI: .csv, .parquet, or sql for database URLs."""
    table: str | None = Field(None, min_length=1, max_length=253)
    """Table name, for the sql format."""
    credentials_secret: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    """Name of a Secret in the same namespace whose keys are passed to the job as environment variables."""


class BatchServing(Model):
    """Settings for batch scoring: a CronJob that scores a table or files on a schedule."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.input.uri != self.output.uri || (has(self.input.table) && has(self.output.table)"
                " && self.input.table != self.output.table)",
                "output must not overwrite input: use a different uri or table",
                ".output",
            ),
            cel(
                "(self.input.format == 'sql') == has(self.input.table)"
                " && (self.output.format == 'sql') == has(self.output.table)",
                "table is required with format sql, and only with it",
            ),
        )
    )

    schedule: Cron
    """When to score, in cron format (0 3 * * *) or a macro such as @daily."""
    time_zone: str | None = Field(None, min_length=1, max_length=64)
    """IANA time zone of the schedule, for example Europe/Berlin. Unset, the controller's (UTC)."""
    input: DataLocation
    """Rows to score."""
    output: DataLocation
    """Where scored rows go. Written atomically: a failed run leaves no half-written output. During a
    release the challenger writes to a shadow location beside it."""
    rejects: DataLocation | None = None
    """Where rows that fail validation go, with the reasons. Unset, beside the output."""
    chunk_rows: int = Field(50_000, ge=100, le=10_000_000)
    """Rows read and scored at a time; bounds the job's memory."""
    active_deadline: Duration = "6h"
    """Longest a single run may take before it is stopped and counted as failed."""


class StreamingServing(Model):
    """Settings for streaming: a consumer that scores events from one topic into another."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.inputTopic != self.outputTopic",
                "outputTopic must differ from inputTopic",
                ".outputTopic",
            )
        )
    )

    brokers: list[Annotated[str, Field(pattern=r"^\S+:[0-9]{1,5}$", max_length=256)]] = Field(
        min_length=1, max_length=16
    )
    """Bootstrap brokers of the event bus, host:port each."""
    input_topic: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    """Topic to consume events from."""
    output_topic: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    """Topic to publish scored events to."""
    consumer_group: str | None = Field(None, min_length=1, max_length=255)
    """Consumer group. Unset, steward-<namespace>-<name>."""


class Serving(Model):
    """How predictions are served. Exactly the settings block of the chosen mode may be given."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.mode != 'batch' || has(self.batch)",
                "serving.batch (with a schedule, input and output) is required when mode is batch",
                ".batch",
                "FieldValueRequired",
            ),
            cel(
                "self.mode != 'streaming' || has(self.streaming)",
                "serving.streaming (with brokers and topics) is required when mode is streaming",
                ".streaming",
                "FieldValueRequired",
            ),
            cel(
                "self.mode == 'online' || !has(self.online)",
                "serving.online is only allowed when mode is online",
                ".online",
                "FieldValueForbidden",
            ),
            cel(
                "self.mode == 'batch' || !has(self.batch)",
                "serving.batch is only allowed when mode is batch",
                ".batch",
                "FieldValueForbidden",
            ),
            cel(
                "self.mode == 'streaming' || !has(self.streaming)",
                "serving.streaming is only allowed when mode is streaming",
                ".streaming",
                "FieldValueForbidden",
            ),
            cel(
                "self.mode == oldSelf.mode",
                "serving.mode is immutable: create a new ModelDeployment to serve in another mode",
                ".mode",
            ),
        )
    )

    mode: Literal["online", "batch", "streaming"] = "online"
    """online: an HTTP API (KServe InferenceService). batch: scores files or a table on a schedule.
    streaming: scores events off an event bus. Immutable once created."""
    online: OnlineServing | None = None
    """Online settings. Unset in online mode, the defaults apply."""
    batch: BatchServing | None = None
    """Batch settings; required in batch mode."""
    streaming: StreamingServing | None = None
    """Streaming settings; required in streaming mode."""


# --- spec.rollout -------------------------------------------------------------------------------------------


class Traffic(Model):
    """How traffic is split and mirrored between the incumbent and the challenger."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.provider != 'traefik' || has(self.gateway) || has(self.hostnames) && size(self.hostnames) > 0",
                "the traefik provider needs gateway (an HTTPRoute on Traefik's Gateway API) or hostnames (an"
                " IngressRoute, as on k3s): without either its route would take every request Traefik receives",
                ".hostnames",
            ),
            cel(
                "self.provider != 'traefik' || !has(self.hostnames) || self.hostnames.all(host, host.matches("
                # Inside a CEL string literal, each backslash of the pattern is written twice.
                "'^" + HOSTNAME.replace("\\", "\\\\") + "$'))",
                "with the traefik provider, hostnames must be DNS names, lowercase, optionally starting with *.",
                ".hostnames",
            ),
        )
    )

    provider: Literal["gateway-api", "istio", "kserve", "traefik"] = "gateway-api"
    """gateway-api: an HTTPRoute with backend weights and a RequestMirror filter, written only when the Gateway's
    class declares mirroring (else the shadow stage holds). istio: a VirtualService with weights, mirror and
    mirrorPercentage. kserve: KServe's own canaryTrafficPercent (no shadow). traefik: a weighted and a mirroring
    TraefikService, led to by an HTTPRoute on the gateway or, without one, an IngressRoute for hostnames (k3s)."""
    gateway: str | None = Field(None, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """The Gateway the route attaches to, as name or namespace/name (gateway-api, istio and traefik)."""
    hostnames: list[Annotated[str, Field(max_length=253)]] = Field(default_factory=list, max_length=16)
    """Host names the route answers for. Empty: all hosts of the gateway (traefik without a gateway needs some)."""


class Validation(Model):
    """The offline gate: the challenger's held-out results against the incumbent's, before any traffic."""

    enabled: bool = True
    """Run the gate. A challenger that fails it never receives traffic."""
    metric: Metric | None = None
    """Held-out metric to compare. Unset: rocAuc for classifiers, rmse for regressors."""
    tolerance: float = Field(0.0, ge=0, le=1)
    """How much worse than the incumbent the challenger may be, as a fraction of the incumbent's result
    (0.01: 1% worse)."""


class Shadow(Model):
    """Shadow phase: the challenger answers a mirrored copy of live requests; its answers are logged and
    compared, never returned."""

    percent: Percent = 100
    """Share of live requests mirrored to the challenger, 1-100."""
    min_requests: int = Field(1000, ge=1)
    """Mirrored requests needed before the shadow phase can end."""
    min_duration: Duration = "15m"
    """Shortest time in shadow, so slow-moving effects have a chance to show."""


class Canary(Model):
    """Canary phase: the challenger takes a growing share of live traffic, one step at a time."""

    steps: list[Percent] = Field(
        default_factory=lambda: [5, 25, 50],
        min_length=1,
        max_length=20,
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            "x-kubernetes-validations": [
                cel("self.isSorted()", "canary steps must be strictly increasing, each within 1..99"),
                cel(
                    "self.all(step, step < 100)",
                    "canary steps must be below 100: at 100% the incumbent answers nothing, so the challenger"
                    " could not be compared with it; promotion after the last step gives it all traffic",
                ),
            ],
        },
    )
    """Challenger weights in percent, strictly increasing within 1..100 but never 100 itself: at a step the
    challenger answers that share while the incumbent answers the rest, so the two can be compared. After the
    last step the challenger is promoted to 100%. A step of 100 (which the API refuses; an older resource may
    still hold one) is taken as that promotion: the step before it is the last one judged, and without a stage
    before it that compared the two (a lower step, or shadow) the challenger is rolled back."""
    min_requests_per_step: int = Field(500, ge=1)
    """Requests the challenger must answer at a step before the step can end."""
    min_step_duration: Duration = "5m"
    """Shortest time at each step."""


class Guardrail(Model):
    """A live check that rolls the challenger back as soon as it is credibly worse than the incumbent."""

    name: Literal["errorRate", "slowRequests", "predictionShift"]
    """errorRate: share of requests answered with 5xx, counted by the predictors and, where the traffic
    provider's gateway exports per-backend counts (traefik), by the gateway, whichever saw more. slowRequests:
    share of timed requests slower than the incumbent's p95 latency (the smallest latency bucket boundary holding
    95% of its requests in the same window). predictionShift: total variation distance between the two
    prediction distributions. A guardrail without data on both versions holds the release: no data is not a
    pass."""
    tolerance: float = Field(0.0, ge=0, le=1)
    """How much worse the challenger may be before it counts as a breach, absolute, in the metric's units (a
    share of requests, or a distance). 0: any credible increase. For slowRequests, whose incumbent share is at
    most 5% by construction, 0.05 misses a 30% slower challenger; 0 catches it, with false rollbacks still
    within 1 - confidence."""


def _default_guardrails() -> list[Guardrail]:
    return [Guardrail(name="errorRate"), Guardrail(name="slowRequests")]


def _confidence_range(value: float) -> float:
    if not 0.5 <= value <= 0.999:
        raise ValueError("confidence must be within 0.5 and 0.999")
    return value


class Rollout(Model):
    """How a new version proves itself: validation, shadow, canary, and automatic promotion or rollback."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.shadow) || self.traffic.provider != 'kserve'",
                "shadow traffic is not supported by the kserve traffic provider: use gateway-api, istio or"
                " traefik, or remove rollout.shadow",
                ".shadow",
                "FieldValueForbidden",
            ),
            cel(
                "self.confidence >= 0.5 && self.confidence <= 0.999",
                "confidence must be within 0.5 and 0.999",
                ".confidence",
            ),
            cel(
                "duration(self.maxDuration) >= duration(self.canary.minStepDuration)",
                "maxDuration must be at least canary.minStepDuration",
                ".maxDuration",
            ),
        )
    )

    traffic: Traffic = Field(default_factory=Traffic)
    """Traffic splitting and mirroring."""
    validation: Validation = Field(default_factory=Validation)
    """Offline validation gate."""
    shadow: Shadow | None = None
    """Shadow phase. Unset: no shadow phase; the release goes from validation to the canary."""
    canary: Canary = Field(default_factory=Canary)
    """Canary steps."""
    guardrails: list[Guardrail] = Field(
        default_factory=_default_guardrails,
        max_length=3,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Checks that roll the challenger back when it is credibly worse. The significance level is split
    across them. Unset: errorRate and slowRequests, both with tolerance 0."""
    # The range is a CEL rule in the CRD: the API server's own bound check prints 0.999 as 0.
    confidence: Annotated[float, AfterValidator(_confidence_range)] = 0.95
    """Confidence of every automatic decision (1 - alpha), 0.5-0.999. The checks are anytime-valid, so
    looking after every scrape does not inflate false alarms."""
    max_duration: Duration = "24h"
    """Longest a release may take. When it runs out without a verdict, the incumbent stays."""
    progress_deadline: Duration = "10m"
    """How long the challenger may be not ready in a stage that sends it traffic (shadow or canary) before it is
    rolled back: it gets no traffic meanwhile, and a version that stops answering counts against itself."""
    rollback_window: Duration = "168h"
    """How long a replaced version stays known-good: re-applying it within this window switches back at
    once, without a new release."""


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
    """Length of each comparison window."""
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
