"""spec.owner, spec.model and spec.serving: who owns the model, which version of it serves, and how."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from steward_operator.specs.base import _PYTHON_NAME, Cron, Duration, Label, Model, Quantity, Uri, cel, validations

# --- spec.owner, spec.model ---------------------------------------------------------------------------------


class Owner(Model):
    """Who answers for this model in production."""

    team: str = Field(min_length=1, max_length=128)
    """Team that owns the model, for example growth-ml."""
    contact: str = Field(min_length=1, max_length=256)
    """Where to reach the team when the model misbehaves: an e-mail address, a chat channel or a pager alias."""
    runbook: str = Field(pattern=r"^https?://\S+$", max_length=2048)
    """URL of the runbook that on-call follows for this model (http or https)."""


PVC_BUNDLE = r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(/[^/]\S*)?$"
"""pvc://<claim>/<path>: a PersistentVolumeClaim in the ModelDeployment's namespace, and a path inside it."""


class ModelRef(Model):
    """The model version to serve and the sealed bundle that holds it (pipeline, feature schema, baselines)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!self.bundle.startsWith('pvc://') || self.bundle.matches('" + PVC_BUNDLE.replace("\\", "\\\\") + "')"
                " && !self.bundle.contains('/../') && !self.bundle.endsWith('/..')",
                "a pvc:// bundle is pvc://<claim>/<path>: the claim a lowercase DNS name in this namespace, the path"
                " inside it without '..'",
                ".bundle",
            ),
        )
    )

    version: Label
    """Version of the model, for example 2024-06-01 or v7. Used in labels and child names: at most 63 characters,
    letters, digits, '.', '_' and '-'. Changing it starts a release."""
    bundle: Uri
    """URI of the model bundle: s3://, gs://, pvc://<claim>/<path>, https:// or file:// (or an absolute path in the
    image). Online, KServe's storage initializer places it at /mnt/models in the predictor; the stream workers and
    batch jobs read it themselves, with a pvc:// bundle's claim mounted read-only."""
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
                # Unset, format is inferred from the URI: only an explicit sql goes with a table.
                "(has(self.input.format) && self.input.format == 'sql') == has(self.input.table)"
                " && (has(self.output.format) && self.output.format == 'sql') == has(self.output.table)",
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


class SecretRef(Model):
    """A Secret in the ModelDeployment's namespace."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    """The Secret's name."""


class StreamingServing(Model):
    """Settings for streaming: workers that score every record of one topic into another, exactly once."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.inputTopic != self.outputTopic",
                "outputTopic must differ from inputTopic",
                ".outputTopic",
            ),
            cel(
                "!has(self.deadLetterTopic) || self.deadLetterTopic != self.inputTopic"
                " && self.deadLetterTopic != self.outputTopic",
                "deadLetterTopic must differ from inputTopic and outputTopic",
                ".deadLetterTopic",
            ),
        )
    )

    brokers: list[Annotated[str, Field(pattern=r"^\S+:[0-9]{1,5}$", max_length=256)]] = Field(
        min_length=1, max_length=16
    )
    """Bootstrap brokers of the event bus, host:port each."""
    input_topic: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    """Topic to consume events from: each record's value a JSON object of features."""
    output_topic: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    """Topic to publish scored events to, under each input record's key."""
    dead_letter_topic: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    """Topic for records that cannot be scored, as they came, with the reason in the x-steward-error header.
    Unset, <outputTopic>.dead-letter."""
    consumer_group: str | None = Field(None, min_length=1, max_length=255)
    """Consumer group. Unset, steward-<namespace>-<name>."""
    client_secret: SecretRef | None = None
    """A Secret whose key client.properties holds the Kafka client's settings (SASL, TLS: key=value per line),
    for brokers that need them."""
    replicas: int = Field(1, ge=1, le=256)
    """Workers. Each takes some of the input topic's partitions; workers beyond the partition count sit idle."""
    max_records: int = Field(500, ge=1, le=100_000)
    """Records consumed, validated and scored at a time."""
    commit_interval: Duration = "100ms"
    """Longest a transaction stays open: answers become visible to read_committed readers when it commits."""
    dead_letter_ceiling: float = Field(0.5, gt=0, le=1)
    """The largest share of a version's recent records that may be dead-lettered. A challenger over it loses its
    share of the records; an incumbent over it stops the workers taking records, rather than dead-letter the
    whole stream."""
    resources: Resources | None = None
    """CPU and memory for each worker. Unset, the cluster's defaults apply."""


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
