"""The one small interface every metric provider implements: what one version served in a window of time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


class UnknownProviderError(ValueError):
    """A metric provider was asked for by a name this operator does not have."""


class MetricsUnavailableError(RuntimeError):
    """The metrics could not be read: the provider is down, timed out, refused the query or answered something
    unreadable. This is "no data", never "zero": a release waits for data; it neither promotes nor rolls back."""


@dataclass(frozen=True)
class ArmCounts:
    """What one model version (an arm: the incumbent or the challenger) served in a window, summed over its
    pods. Counts are exact at scrape resolution: an event belongs to the window holding the first scrape that
    saw it, so the counts of adjacent windows add up to those of the window they make together."""

    requests: int = 0
    """Requests answered, whatever their status code."""
    errors: int = 0
    """Requests answered with a 5xx status code."""
    timed: int = 0
    """Requests whose latency was recorded (the latency histogram's count)."""
    slow: int = 0
    """Requests, among the timed ones, slower than `slow_after`; 0 when no threshold was asked for."""
    slow_after: float | None = None
    """The latency threshold actually applied, in seconds: the one asked for, rounded up to a bucket boundary."""
    latency: dict[float, int] = field(default_factory=dict)
    """Timed requests no slower than each latency bucket boundary (seconds; the last is inf), summed over pods:
    what a threshold chosen afterwards, such as the incumbent's p95, is applied with."""
    predictions: dict[str, int] = field(default_factory=dict)
    """Predictions per bin: the predicted class, or the training bin of a predicted value."""
    scores: dict[str, int] = field(default_factory=dict)
    """Binary classifiers: positive-class probabilities per training bin."""
    targets: int = 0
    """Scrape targets (pods) that reported this version inside the window."""
    series: int = 0
    """Counter series the counts were summed from."""
    resets: int = 0
    """Counter resets seen (a pod's process restarted), counted once per pod and restart."""
    gaps: int = 0
    """Scrapes missed inside the window, counted once per pod and missed scrape: counts stay exact across a
    gap, but what a pod served after its last scrape before a restart is lost."""
    newest: datetime | None = None
    """When the newest scrape that reported this version began; None when no pod reported it at all."""
    unusable: dict[str, str] = field(default_factory=dict)
    """Readings that could not be used, by the field they would have counted into (requests, latency,
    predictions, scores), with what was wrong, such as a sample that is not a finite number. That field's count
    leaves them out, so it is incomplete: the decision engine does not decide on it."""
    gateway_requests: int | None = None
    """Requests the gateway in front of the version sent to its Service (mirrored ones included) and answered;
    None when no gateway reported any for it (the traffic provider's gateway exports no per-backend counts, or
    the metric provider does not read them)."""
    gateway_errors: int | None = None
    """Of those, the ones the gateway answered with a 5xx status code: the predictors' own errors, and those the
    gateway made itself when no pod answered (a 502 or 504 for a pod that died mid-request), which no predictor
    ever counts."""


@dataclass(frozen=True)
class Gateway:
    """The gateway that leads requests to a version, and the Service it sends them to: where the gateway's own
    count of what it answered for the version is found."""

    provider: str
    """The traffic provider (spec.rollout.traffic.provider) whose gateway it is."""
    namespace: str
    service: str
    port: int


@dataclass(frozen=True)
class HeldOutResults:
    """A version's held-out results as its predictor publishes them, a name for the rows they were computed on
    (equal names: the same held-out data), and the digests of the bundles its predictors loaded."""

    metrics: dict[str, float]
    data: str
    digests: frozenset[str] = frozenset()
    """One digest when every replica loaded the same bundle; more when the bundle at the version's URI changed
    between replicas' starts."""


@dataclass(frozen=True)
class Quality:
    """A version's live quality on matured outcomes (from the monitor), beside its held-out results."""

    live: dict[str, float]
    held_out: dict[str, float]
    labelled: int
    """Predictions whose outcome has arrived."""


@dataclass(frozen=True)
class Behind:
    """How far one version of a stream is behind its input topic."""

    records: int
    """Records it has yet to score, over every partition."""
    partitions: int
    """The input partitions its workers own."""


@dataclass(frozen=True)
class PairCounts:
    """Both versions' answers to the same requests (shadow traffic), as the monitor pairs them by request id."""

    pairs: int
    disagreements: int
    """Pairs whose two answers differ (a class, or a value beyond the monitor's tolerance)."""
    labelled: int = 0
    """Pairs whose outcome has arrived."""
    only_incumbent: int = 0
    """Labelled pairs only the incumbent answered correctly."""
    only_challenger: int = 0
    """Labelled pairs only the challenger answered correctly."""


@dataclass(frozen=True)
class Losses:
    """One version's per-prediction loss on its matured outcomes, for one quality metric (a misclassification for
    accuracy, the log loss, the absolute or the squared error): how many, their mean and their variance."""

    count: int
    mean: float
    variance: float


@dataclass(frozen=True)
class Outcomes:
    """Both versions' losses on the predictions old enough for their outcomes to have arrived, over the same span
    of time; None for a version the monitor has no labelled prediction of."""

    metric: str
    incumbent: Losses | None
    challenger: Losses | None
    until: datetime
    """The youngest prediction counted: now less the outcome's label delay."""
    least: int = 1
    """Matured outcomes each version needs before it is judged (monitoring.outcome.minLabels)."""


class MonitorSource(Protocol):
    """Where what the monitor joined is read: paired answers, and quality on matured outcomes."""

    async def pairs(
        self, model: str, incumbent: str, challenger: str, since: datetime, *, namespace: str
    ) -> PairCounts:
        """The pairs of both versions' answers to requests since `since`. Raises MetricsUnavailableError."""
        ...

    async def losses(
        self, model: str, metric: str, since: datetime, until: datetime, *, namespace: str
    ) -> dict[str, Losses]:
        """Each version's losses for `metric` on its labelled predictions made from `since` to `until`. Raises
        MetricsUnavailableError."""
        ...


class MetricProvider(Protocol):
    name: str
    """The name that selects this provider in `metric_provider(name, url)`."""

    async def window(
        self,
        model: str,
        version: str,
        start: datetime,
        end: datetime,
        slow_after: float | None = None,
        *,
        namespace: str | None = None,
        gateway: Gateway | None = None,
    ) -> ArmCounts:
        """What `version` of `model` served between `start` and `end` (aware datetimes), with requests slower than
        `slow_after` seconds counted; only pods in `namespace` when given; with what `gateway` answered for it
        when its metrics are known. Raises MetricsUnavailableError."""
        ...

    async def held_out(
        self, model: str, version: str, at: datetime, *, namespace: str | None = None
    ) -> HeldOutResults | None:
        """The version's held-out results as its predictors publish them; None while none has reported."""
        ...

    async def drifting(self, model: str, version: str, *, namespace: str | None = None) -> tuple[str, ...]:
        """The features (and the predictions, as steward_contracts.metrics.PREDICTION_FEATURE) whose drift the
        monitor finds sustained for this version. Raises MetricsUnavailableError."""
        ...

    async def quality(self, model: str, version: str, *, namespace: str | None = None) -> Quality:
        """The version's live quality on matured outcomes and its held-out results. Raises
        MetricsUnavailableError."""
        ...

    async def lag(self, model: str, *, namespace: str | None = None) -> dict[str, Behind]:
        """How far each version of a stream is behind, as its workers report it now. Raises
        MetricsUnavailableError."""
        ...

    async def healthy(self) -> bool:
        """Whether the provider answers queries now; never raises."""
        ...
