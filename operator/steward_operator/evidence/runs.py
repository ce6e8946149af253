"""A batch challenger's runs as evidence. Each run of its CronJob scores the same input with both versions
(`steward-predict batch --compare-with`) and leaves the comparison in its pod's termination message: the rows each
version read and rejected, their predictions per bin, how many rows both answered and how many of those
differently, and each bundle's held-out results. Read from the finished Jobs of the challenger's own CronJob,
checked as the hostile input a pod's status may be, and summed into the window a batch release is judged on."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import aiohttp

from steward_operator.children import child_name
from steward_operator.evidence.base import ArmCounts, HeldOutResults, MetricsUnavailableError, PairCounts
from steward_operator.kinds import CRON_JOB, JOB, POD
from steward_operator.kubernetes import ApiError, Cluster

MESSAGE_BYTES = 4096
"""The most a termination message holds: a longer one is no run's summary."""
_LARGEST_COUNT = 2**53
_MOST_BINS = 1_000
_MOST_TEXT = 1_000
REFUSED = "challenger bundle refused"
"""What a run that could not load the challenger's bundle says it failed of: the challenger's own failure."""


class UnreadableRunError(ValueError):
    """A run's termination message is no summary this operator can use."""


@dataclass(frozen=True)
class Side:
    """What one version did with a run's rows."""

    version: str
    rows: int
    rejected: int
    predictions: dict[str, int]
    held_out: HeldOutResults


@dataclass(frozen=True)
class Run:
    """One finished run of a batch challenger: the comparison it made, or what failed."""

    job: str
    finished: datetime
    failed: str | None = None
    """What failed (REFUSED, rejected, runtime, usage, interrupted, unreadable), None when it succeeded."""
    error: str = ""
    incumbent: Side | None = None
    challenger: Side | None = None
    pairs: int = 0
    disagreements: int = 0

    def compares(self, incumbent: str, challenger: str) -> bool:
        """Whether the run compared these two versions."""
        return (
            self.incumbent is not None
            and self.challenger is not None
            and (self.incumbent.version, self.challenger.version) == (incumbent, challenger)
        )


class RunSource(Protocol):
    """Where a batch challenger's finished runs are read."""

    async def runs(self, model: str, version: str, since: datetime, *, namespace: str) -> list[Run]:
        """The runs of `version`'s CronJob that finished at or after `since`, oldest first."""
        ...


def parse(job: str, finished: datetime, message: str) -> Run:
    """The run `job` left `message` as its termination message. Raises UnreadableRunError for anything but a
    summary of the shape `steward-predict batch --summary-file` writes, with counts that add up."""
    if len(message.encode()) > MESSAGE_BYTES:
        raise UnreadableRunError(f"a termination message of more than {MESSAGE_BYTES} bytes")
    try:
        found = json.loads(message)
    except ValueError:
        raise UnreadableRunError("a termination message that is not JSON") from None
    if not isinstance(found, dict):
        raise UnreadableRunError("a termination message that is no JSON object")
    failed = found.get("failed")
    if failed is not None and not isinstance(failed, str):
        raise UnreadableRunError("failed is no text")
    error = found.get("error", "")
    error = error[:_MOST_TEXT] if isinstance(error, str) else ""
    comparison = found.get("comparison")
    if comparison is None:
        if failed is None:
            raise UnreadableRunError("a summary without a comparison: the run did not compare the versions")
        return Run(job, finished, failed[:_MOST_TEXT], error)
    if not isinstance(comparison, dict):
        raise UnreadableRunError("comparison is no JSON object")
    incumbent, challenger = _side(comparison, "incumbent"), _side(comparison, "challenger")
    pairs, disagreements = _count(comparison, "pairs"), _count(comparison, "disagreements")
    if disagreements > pairs:
        raise UnreadableRunError(f"{disagreements} disagreements among {pairs} pairs")
    if pairs > min(incumbent.rows - incumbent.rejected, challenger.rows - challenger.rejected):
        raise UnreadableRunError(f"{pairs} pairs, more rows than both versions scored")
    return Run(
        job, finished, failed[:_MOST_TEXT] if failed else None, error, incumbent, challenger, pairs, disagreements
    )


def _side(comparison: dict[str, Any], name: str) -> Side:
    found = comparison.get(name)
    if not isinstance(found, dict):
        raise UnreadableRunError(f"comparison.{name} is no JSON object")
    version = found.get("version")
    if not isinstance(version, str) or not version or len(version) > _MOST_TEXT:
        raise UnreadableRunError(f"comparison.{name}.version is no version")
    rows, rejected = _count(found, "rows", name), _count(found, "rejected", name)
    if rejected > rows:
        raise UnreadableRunError(f"comparison.{name}: {rejected} rows rejected of {rows}")
    predictions = found.get("predictions")
    if not isinstance(predictions, dict) or len(predictions) > _MOST_BINS:
        raise UnreadableRunError(f"comparison.{name}.predictions is no mapping of bins")
    counted = {str(label)[:_MOST_TEXT]: _count(predictions, label, f"{name}.predictions") for label in predictions}
    if sum(counted.values()) > rows - rejected:
        raise UnreadableRunError(f"comparison.{name}: more predictions than rows scored")
    return Side(version, rows, rejected, counted, _held_out(found.get("holdout"), name, found.get("digest")))


def _held_out(found: object, name: str, digest: object) -> HeldOutResults:
    if not isinstance(found, dict) or not isinstance(found.get("metrics"), dict):
        raise UnreadableRunError(f"comparison.{name}.holdout is no mapping of metrics")
    metrics = {}
    for metric, value in found["metrics"].items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UnreadableRunError(f"comparison.{name}.holdout.metrics.{str(metric)[:80]} is no finite number")
        metrics[str(metric)[:_MOST_TEXT]] = float(value)
    data = found.get("data", "")
    digests = frozenset([digest]) if isinstance(digest, str) and digest else frozenset()
    return HeldOutResults(metrics, data[:_MOST_TEXT] if isinstance(data, str) else "", digests)


def _count(found: dict[str, Any], key: str, where: str = "") -> int:
    value = found.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _LARGEST_COUNT:
        place = f"{where}.{key}" if where else key
        raise UnreadableRunError(f"comparison.{place[:120]} is no count")
    return value


def window(runs: list[Run]) -> tuple[ArmCounts, ArmCounts, PairCounts]:
    """Both versions' counts over the runs that compared them, as the live guardrails read them: a row is a
    request, a rejected row an error."""
    compared = [(run, run.incumbent, run.challenger) for run in runs if run.incumbent and run.challenger]
    newest = max((run.finished for run, _, _ in compared), default=None)

    def arm(sides: list[Side]) -> ArmCounts:
        predictions: Counter[str] = Counter()
        for side in sides:
            predictions.update(side.predictions)
        return ArmCounts(
            requests=sum(side.rows for side in sides),
            errors=sum(side.rejected for side in sides),
            predictions=dict(predictions),
            targets=len(sides),
            newest=newest,
        )

    pairs = PairCounts(sum(run.pairs for run, _, _ in compared), sum(run.disagreements for run, _, _ in compared))
    return arm([side for _, side, _ in compared]), arm([side for _, _, side in compared]), pairs


class ClusterRuns:
    """The runs as the cluster holds them: the finished Jobs the challenger's CronJob made, each with the
    termination message of its last pod."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def runs(self, model: str, version: str, since: datetime, *, namespace: str) -> list[Run]:
        try:
            return await self._runs(model, version, since, namespace)
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            raise MetricsUnavailableError(f"the runs of {model} {version} could not be read: {error}") from error

    async def _runs(self, model: str, version: str, since: datetime, namespace: str) -> list[Run]:
        schedule = await self.cluster.get(CRON_JOB, namespace, child_name(model, version))
        if schedule is None:
            return []
        selector = f"steward.dev/model={model},steward.dev/version={version},steward.dev/variant=shadow"
        jobs = [job for job in await self.cluster.list(JOB, namespace, selector) if _controller(job) == _uid(schedule)]
        finished = {_uid(job): (job, when) for job in jobs if (when := _finished(job)) is not None and when >= since}
        if not finished:
            return []
        last: dict[str, dict[str, Any]] = {}
        for pod in await self.cluster.list(POD, namespace, selector):
            owner, state = _controller(pod), _terminated(pod)
            if (
                owner in finished
                and state is not None
                and state.get("finishedAt", "") >= last.get(owner, {}).get("finishedAt", "")
            ):
                last[owner] = state
        found = []
        for uid, (job, when) in finished.items():
            name = job["metadata"]["name"]
            message = str(last.get(uid, {}).get("message") or "")
            try:
                found.append(parse(name, when, message))
            except UnreadableRunError as error:
                found.append(Run(name, when, "unreadable", f"its pod's termination message is unreadable: {error}"))
        return sorted(found, key=lambda run: run.finished)


def _uid(body: dict[str, Any]) -> str:
    return str(body["metadata"].get("uid", ""))


def _controller(body: dict[str, Any]) -> str | None:
    """The uid of the object's controller (a pod's Job, a Job's CronJob)."""
    for owner in body["metadata"].get("ownerReferences") or []:
        if owner.get("controller"):
            return str(owner.get("uid"))
    return None


def _finished(job: dict[str, Any]) -> datetime | None:
    """When the Job completed or failed; None while it runs."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in {"Complete", "Failed"} and condition.get("status") == "True":
            try:
                return datetime.fromisoformat(str(condition.get("lastTransitionTime")))
            except ValueError:
                return None
    return None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == "predictor":
            state = (status.get("state") or {}).get("terminated")
            return state if isinstance(state, dict) else None
    return None
