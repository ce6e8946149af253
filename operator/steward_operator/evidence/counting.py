"""Exact counts per model version from the raw samples of Prometheus series, rather than from `increase()`, which
extrapolates to the window's edges: the samples in, ArmCounts out, with no metrics system in reach.

Each series' growth is the sum of its steps between consecutive samples, and a step belongs to the window when its
later sample is after `start`; so the last sample at or before `start` (found in the lookback) is the baseline, and
the counts of adjacent windows add up exactly. Then, per series:

- a drop, or a change of the series' `*_created` timestamp, is a restart: the counter counted from 0 again,
  and the step is the new value (what the pod served between its last scrape and its restart is lost);
- a series whose first sample is inside the range counts from 0 when it is known to have been 0 before:
  its `*_created` timestamp lies in the range, or its pod was scraped earlier in the range without it (every
  pod serving a version exports `steward_predictor_ready` from the start, so its samples show the pod's
  scrapes). Otherwise, e.g. a new pod that exports no `*_created` series and took traffic before its first
  scrape, counting starts at its first sample;
- a scrape gap (the pod, or Prometheus itself, was down) only means fewer samples, and a longer step: nothing
  is interpolated, and the first scrape after the gap catches up;
- a sample that is no count (NaN, an infinity, a negative number) leaves its series out, and the field it
  counts into is named in ArmCounts.unusable with the series and the sample, so nothing is decided on it.

Series are summed over pods (and variants) to give one version's counts. A gateway's request counter is read the
same way, and adds what the gateway answered for the version.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from steward_contracts.metrics import (
    PREDICTOR_PREDICTIONS,
    PREDICTOR_READY,
    PREDICTOR_REQUEST_DURATION,
    PREDICTOR_REQUESTS,
    PREDICTOR_SCORES,
)
from steward_operator.evidence.base import ArmCounts, MetricsUnavailableError

# The counter families a version's counts are read from, and the gauge whose samples show a pod's scrapes.
REQUESTS = PREDICTOR_REQUESTS.name
LATENCY = PREDICTOR_REQUEST_DURATION.name
PREDICTIONS = PREDICTOR_PREDICTIONS.name
SCORES = PREDICTOR_SCORES.name
READY = PREDICTOR_READY.name
# A spacing between a pod's scrapes longer than this many times its shortest one means scrapes were missed.
_GAP_FACTOR = 1.5
# The ArmCounts field each counter family counts into.
_FIELDS = {REQUESTS: "requests", LATENCY: "latency", PREDICTIONS: "predictions", SCORES: "scores"}

Sample = tuple[float, float]
"""One raw sample: (unix seconds, value)."""
_Target = tuple[str, str]


@dataclass(frozen=True)
class Series:
    """The raw samples of one time series, in time order; `labels` leaves out the metric name."""

    name: str
    labels: Mapping[str, str]
    samples: tuple[Sample, ...]

    @property
    def target(self) -> _Target:
        """The scrape target (pod) it came from: Prometheus labels every series with its job and instance."""
        return self.labels.get("job", ""), self.labels.get("instance", "")


@dataclass(frozen=True)
class Increase:
    """How much one counter grew inside a window, and the restarts seen: each as (after, at), the samples (or
    known zero) between which the counter restarted."""

    value: float
    resets: tuple[tuple[float, float], ...] = ()


def quote(value: str) -> str:
    """`value` as a PromQL string literal. Besides backslash and double quote, control characters and U+FFFD
    (which Prometheus' lexer takes for invalid UTF-8) are written as escapes."""
    escaped = []
    for char in value:
        if char in '\\"':
            escaped.append("\\" + char)
        elif char == "\n":
            escaped.append("\\n")
        elif ord(char) < 0x20 or char in "\x7f\ufffd":
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def parse_matrix(data: Any) -> list[Series]:
    """The series of an instant query's range-vector result; MetricsUnavailableError when it is not one."""
    try:
        if data["resultType"] != "matrix":
            raise MetricsUnavailableError(f"Prometheus answered a {data['resultType']}, not a matrix")
        found = []
        for result in data["result"]:
            labels = {str(key): str(value) for key, value in result["metric"].items()}
            name = labels.pop("__name__")
            samples = tuple(sorted((float(moment), float(value)) for moment, value in result["values"]))
            found.append(Series(name, labels, samples))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise MetricsUnavailableError(f"Prometheus answered something that is not a range vector: {error!r}") from None
    return found


def counter_increase(
    samples: Sequence[Sample],
    start: float,
    *,
    zero_at: float | None = None,
    created: Mapping[float, float] | None = None,
) -> Increase:
    """How much a counter grew after `start`: the sum of its steps between consecutive samples whose later sample
    is after `start`. A drop, or a change of its `*_created` timestamp (`created`: sample time -> creation
    time), is a restart, and the step is the new value. `zero_at`: a moment before the first sample at which
    the counter is known to have been 0; without it, counting starts at the first sample."""
    created = created or {}
    if not samples:
        return Increase(0.0)
    points = list(samples)
    if zero_at is not None and zero_at < points[0][0]:
        previous, previous_created = (zero_at, 0.0), None
    else:
        previous = points.pop(0)
        previous_created = created.get(previous[0])
    total, resets = 0.0, []
    for moment, value in points:
        born = created.get(moment)
        restarted = value < previous[1] or (
            born is not None and previous_created is not None and born != previous_created
        )
        if moment > start:
            total += value if restarted else value - previous[1]
            if restarted:
                resets.append((previous[0], moment))
        previous, previous_created = (moment, value), born
    return Increase(total, tuple(resets))


def zero_point(first: float, since: float, created_at: float | None, scrapes: Sequence[float]) -> float | None:
    """When a series whose first sample in [since, ...] is at `first` is known to have been 0: its creation time
    when that is in range, else the latest earlier scrape of its pod (which did not have it), else never."""
    if created_at is not None and since <= created_at <= first:
        return created_at
    earlier = [moment for moment in scrapes if since <= moment < first]
    return max(earlier, default=None)


def missed_scrapes(scrapes: Sequence[float], after: float) -> int:
    """Scrapes of one pod missed after `after`, judged from the spacing of its scrapes (in time order) against
    the shortest one, which is its scrape interval."""
    spacings = [(later, later - earlier) for earlier, later in pairwise(scrapes)]
    if len(spacings) < 2:
        return 0
    interval = min(spacing for _, spacing in spacings)
    if interval <= 0:
        return 0
    return sum(
        round(spacing / interval) - 1
        for later, spacing in spacings
        if later > after and spacing > _GAP_FACTOR * interval
    )


def restarts(resets: Iterable[tuple[float, float]]) -> int:
    """The fewest restarts of one pod that explain every counter reset seen in it: one process restart resets all
    of its counters, but each is seen at its own next sample, so resets whose (after, at] spans overlap can be
    one restart."""
    found, explained = 0, -math.inf
    for after, at in sorted(resets, key=lambda span: span[1]):
        if after >= explained:
            found, explained = found + 1, at
    return found


def slow_bound(bounds: Iterable[float], slow_after: float) -> float:
    """The latency histogram bucket boundary used for `slow_after`: the smallest `le` at or above it. A request is
    then slow when it took longer than that boundary, so a threshold between boundaries is rounded up to the
    next one, and one above the largest finite boundary counts nothing as slow (+Inf)."""
    tolerance = 1e-9 * abs(slow_after)
    return min((bound for bound in bounds if bound >= slow_after - tolerance), default=math.inf)


def count(series: Sequence[Series], start: float, since: float, slow_after: float | None) -> ArmCounts:
    """One version's counts in the window after `start`, from the raw series read over [since, end]."""
    scrapes: dict[_Target, set[float]] = defaultdict(set)
    created: dict[tuple[str, frozenset[tuple[str, str]]], dict[float, float]] = {}
    counters: list[Series] = []
    for one in series:
        scrapes[one.target].update(moment for moment, _ in one.samples)
        if one.name.endswith("_created"):
            created[(one.name.removesuffix("_created"), _without_le(one.labels))] = dict(one.samples)
        elif one.name != READY:
            counters.append(one)
    ordered = {target: sorted(moments) for target, moments in scrapes.items()}

    tally = _Tally()
    for one in counters:
        if not one.samples:
            continue
        family = one.name.removesuffix("_total").removesuffix("_bucket")
        spoilt = next(
            ((moment, value) for moment, value in one.samples if not (math.isfinite(value) and value >= 0)), None
        )
        if spoilt is not None:
            # A counter is a finite, non-negative number: one that is not cannot be counted with, nor be left
            # out silently. Its field is marked, so no decision is taken on the rest.
            field_name = _FIELDS.get(family)
            if field_name is not None:
                tally.unusable.setdefault(
                    field_name, f"{_shown(one)} has a sample of {spoilt[1]} at {_moment(spoilt[0])}"
                )
            continue
        births = created.get((family, _without_le(one.labels)), {})
        first = one.samples[0][0]
        zero_at = zero_point(first, since, births.get(first), ordered[one.target])
        increase = counter_increase(one.samples, start, zero_at=zero_at, created=births)
        tally.resets[one.target].extend(increase.resets)
        tally.add(family, one, increase.value)

    timed, slow, applied = tally.latency(slow_after)
    buckets: dict[float, float] = defaultdict(float)
    for histogram in tally.buckets.values():
        for bound, grown in histogram.items():
            buckets[bound] += grown
    newest = max((moments[-1] for moments in ordered.values() if moments), default=None)
    whole = tally.whole
    return ArmCounts(
        requests=whole(tally.requests, "requests"),
        errors=whole(tally.errors, "requests"),
        timed=whole(timed, "latency"),
        slow=whole(slow, "latency"),
        slow_after=applied,
        latency={bound: whole(value, "latency") for bound, value in sorted(buckets.items())},
        predictions={label: whole(value, "predictions") for label, value in sorted(tally.predictions.items())},
        scores={label: whole(value, "scores") for label, value in sorted(tally.scores.items())},
        targets=sum(1 for moments in ordered.values() if moments and moments[-1] > start),
        series=len(counters),
        resets=sum(restarts(seen) for seen in tally.resets.values()),
        gaps=sum(missed_scrapes(moments, start) for moments in ordered.values()),
        newest=None if newest is None else datetime.fromtimestamp(newest, UTC),
        unusable=dict(tally.unusable),
    )


def with_gateway(counts: ArmCounts, series: Sequence[Series], start: float, since: float) -> ArmCounts:
    """`counts` with what the gateway answered in the window after `start`, from its request counter's raw series
    read over [since, end] (one per gateway instance and status code); unchanged when it reported nothing."""
    scrapes: dict[_Target, set[float]] = defaultdict(set)
    for one in series:
        scrapes[one.target].update(moment for moment, _ in one.samples)
    ordered = {target: sorted(moments) for target, moments in scrapes.items()}
    requests = errors = 0.0
    for one in series:
        if not one.samples:
            continue
        spoilt = next(((at, value) for at, value in one.samples if not (math.isfinite(value) and value >= 0)), None)
        if spoilt is not None:
            what = f"the gateway's {_shown(one)} has a sample of {spoilt[1]} at {_moment(spoilt[0])}"
            return replace(counts, unusable={"requests": what, **counts.unusable})
        # A status code's series appears with its first request: it was 0 at the instance's scrape before.
        zero_at = zero_point(one.samples[0][0], since, None, ordered[one.target])
        grown = counter_increase(one.samples, start, zero_at=zero_at).value
        requests += grown
        if one.labels.get("code", "").startswith("5"):
            errors += grown
    if not ordered:
        return counts
    if not math.isfinite(requests):
        return replace(counts, unusable={"requests": f"the gateway's counts add up to {requests}", **counts.unusable})
    return replace(counts, gateway_requests=round(requests), gateway_errors=round(errors))


@dataclass
class _Tally:
    """Increases summed over a version's series as they are read."""

    requests: float = 0.0
    errors: float = 0.0
    predictions: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    scores: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # Per pod and histogram: bucket boundary -> increase.
    buckets: dict[tuple[_Target, frozenset[tuple[str, str]]], dict[float, float]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    # Per pod: where each of its counters was seen to restart.
    resets: dict[_Target, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    # Per ArmCounts field: what could not be counted into it.
    unusable: dict[str, str] = field(default_factory=dict)

    def whole(self, value: float, field_name: str) -> int:
        """`value` as a count; 0, with the field marked unusable, when the samples added up to no finite number."""
        if math.isfinite(value):
            return round(value)
        self.unusable.setdefault(field_name, f"its samples add up to {value}")
        return 0

    def add(self, family: str, one: Series, increase: float) -> None:
        if family == REQUESTS:
            self.requests += increase
            if one.labels.get("code", "").startswith("5"):
                self.errors += increase
        elif family == LATENCY:
            try:
                bound = float(one.labels["le"])
            except (KeyError, ValueError):
                raise MetricsUnavailableError(f"a histogram bucket without a boundary: {one.labels}") from None
            self.buckets[(one.target, _without_le(one.labels))][bound] = increase
        elif family == PREDICTIONS:
            self.predictions[one.labels.get("bin", "")] += increase
        elif family == SCORES:
            self.scores[one.labels.get("bin", "")] += increase

    def latency(self, slow_after: float | None) -> tuple[float, float, float | None]:
        """Timed requests, slow ones, and the boundary applied (the threshold asked for, without buckets)."""
        timed = slow = 0.0
        applied: set[float] = set()
        for histogram in self.buckets.values():
            everything = histogram.get(math.inf, 0.0)
            timed += everything
            if slow_after is not None:
                bound = slow_bound(histogram, slow_after)
                applied.add(bound)
                slow += everything - histogram.get(bound, everything)
        return timed, slow, max(applied) if applied else slow_after


def _shown(one: Series) -> str:
    """A series as PromQL writes it, so a person can look it up."""
    return one.name + "{" + ",".join(f"{key}={quote(value)}" for key, value in sorted(one.labels.items())) + "}"


def _moment(unix: float) -> str:
    try:
        return datetime.fromtimestamp(unix, UTC).isoformat()
    except (ValueError, OverflowError, OSError):
        return f"unix time {unix}"


def _without_le(labels: Mapping[str, str]) -> frozenset[tuple[str, str]]:
    """A series' identity within its family, shared by a histogram's buckets and its `*_created` series."""
    return frozenset((key, value) for key, value in labels.items() if key != "le")
