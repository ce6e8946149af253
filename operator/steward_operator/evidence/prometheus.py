"""Prometheus as a metric provider: exact counts per model version, from the raw samples of the predictors'
counters rather than from `increase()`, which extrapolates to the window's edges.

One query per window reads every sample of the version's counters in [start - lookback, end], and `counting` counts
them: the last sample at or before `start` (found in the lookback) is each series' baseline, so the counts of
adjacent windows add up exactly, which lets a caller keep running totals by asking only for what is new. A window
ending now sees what was scraped up to now: ask a scrape interval after `end` to see it all.

The gateway in front of a version counts what it answered for it too, and that is read the same way when this
provider knows the gateway's series (GATEWAYS): it also answers for pods that died mid-request or never answered,
which no predictor counts.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from steward_contracts.metrics import (
    MONITOR_DRIFT_ALERTING,
    MONITOR_LABELLED_PREDICTIONS,
    MONITOR_QUALITY,
    PREDICTOR_HOLDOUT,
    PREDICTOR_MODEL_INFO,
    PREDICTOR_PREDICTIONS,
    PREDICTOR_REQUEST_DURATION,
    PREDICTOR_REQUESTS,
    PREDICTOR_SCORES,
    STREAM_LAG,
)
from steward_operator.evidence.base import (
    ArmCounts,
    Behind,
    Gateway,
    HeldOutResults,
    MetricsUnavailableError,
    Quality,
)
from steward_operator.evidence.counting import READY, count, parse_matrix, quote, with_gateway

# Every series a window needs, read in one query so that all of them describe the same moment: the counters, when
# each of their series was created (restarts and new pods), and the ready gauge (a pod's scrapes).
WINDOW_SERIES = (
    PREDICTOR_REQUESTS.sample("total"),
    PREDICTOR_REQUESTS.sample("created"),
    PREDICTOR_REQUEST_DURATION.sample("bucket"),
    PREDICTOR_REQUEST_DURATION.sample("created"),
    PREDICTOR_PREDICTIONS.sample("total"),
    PREDICTOR_PREDICTIONS.sample("created"),
    PREDICTOR_SCORES.sample("total"),
    PREDICTOR_SCORES.sample("created"),
    READY,
)
_PREFIX = "steward_predictor_"
NAMES = _PREFIX + "(" + "|".join(name.removeprefix(_PREFIX) for name in WINDOW_SERIES) + ")"
DEFAULT_TIMEOUT = 5.0
# Prometheus' own default lookback: a baseline sample is looked for this far before a window's start.
DEFAULT_LOOKBACK = timedelta(minutes=5)


def traefik(gateway: Gateway) -> str:
    """Traefik counts what it answered per load-balanced Service, mirrored requests included, and names one that
    a TraefikService leads to `<namespace>-<name>-<port>@kubernetescrd`, every run of characters other than letters
    and digits made one dash."""
    name = "-".join(re.findall(r"[^\W_]+", f"{gateway.namespace}-{gateway.service}-{gateway.port}"))
    return f"traefik_service_requests_total{{service={quote(name + '@kubernetescrd')}}}"


# The series a gateway counts what it answered for one Service in, per traffic provider; a request counter with the
# status code in its `code` label. A provider not named here gives no gateway counts.
GATEWAYS: dict[str, Callable[[Gateway], str]] = {"traefik": traefik}


class Prometheus:
    """Reads the predictors' series over Prometheus' HTTP API (/api/v1/query)."""

    name = "prometheus"

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT, lookback: timedelta = DEFAULT_LOOKBACK) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.lookback = lookback

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
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError(f"a window needs aware datetimes, not {start!r} .. {end!r}")
        if end < start:
            raise ValueError(f"a window ends after it starts, not {start.isoformat()} .. {end.isoformat()}")
        if slow_after is not None and not slow_after >= 0:
            raise ValueError(f"slow_after is a latency in seconds, not {slow_after!r}")
        # Whole milliseconds, rounded down, so no sample after `end` is read.
        until = math.floor(end.timestamp() * 1000) / 1000
        since = start.timestamp() - self.lookback.total_seconds()
        span = math.ceil((until - since) * 1000)
        queries = [f"{selector(model, version, namespace)}[{span}ms]"]
        gateway_series = GATEWAYS.get(gateway.provider) if gateway is not None else None
        if gateway is not None and gateway_series is not None:
            queries.append(f"{gateway_series(gateway)}[{span}ms]")
        found = await asyncio.gather(*(self._query(query, until) for query in queries))
        counts = count(parse_matrix(found[0]), start.timestamp(), since, slow_after)
        if len(found) == 1:
            return counts
        return with_gateway(counts, parse_matrix(found[1]), start.timestamp(), since)

    async def held_out(
        self, model: str, version: str, at: datetime, *, namespace: str | None = None
    ) -> HeldOutResults | None:
        data = await self._query(f"{PREDICTOR_HOLDOUT.name}{_matchers(model, version, namespace)}", at.timestamp())
        try:
            samples = [(item["metric"], float(item["value"][1])) for item in data["result"]]
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise MetricsUnavailableError(f"Prometheus answered an unreadable vector: {error!r}") from None
        if not samples:
            return None
        # Every pod of a version serves the same bundle, so any pod's figures are the version's.
        fingerprint = samples[0][0].get("data", "")
        metrics = {labels["metric"]: value for labels, value in samples if labels.get("data", "") == fingerprint}
        info = await self._query(f"{PREDICTOR_MODEL_INFO.name}{_matchers(model, version, namespace)}", at.timestamp())
        try:
            digests = frozenset(item["metric"]["digest"] for item in info["result"] if item["metric"].get("digest"))
        except (KeyError, TypeError) as error:
            raise MetricsUnavailableError(f"Prometheus answered an unreadable vector: {error!r}") from None
        return HeldOutResults(metrics=metrics, data=fingerprint, digests=digests)

    async def drifting(self, model: str, version: str, *, namespace: str | None = None) -> tuple[str, ...]:
        found = await self._instant(f"{MONITOR_DRIFT_ALERTING.name}{_matchers(model, version, namespace)} == 1")
        return tuple(sorted({labels.get("feature", "") for labels, _ in found}))

    async def quality(self, model: str, version: str, *, namespace: str | None = None) -> Quality:
        matchers = _matchers(model, version, namespace)
        live = await self._instant(f"max by (metric) ({MONITOR_QUALITY.name}{matchers})")
        held_out = await self._instant(f"max by (metric) ({PREDICTOR_HOLDOUT.name}{matchers})")
        labelled = await self._instant(f"max({MONITOR_LABELLED_PREDICTIONS.name}{matchers})")
        return Quality(
            live={labels["metric"]: value for labels, value in live if "metric" in labels},
            held_out={labels["metric"]: value for labels, value in held_out if "metric" in labels},
            labelled=round(labelled[0][1]) if labelled else 0,
        )

    async def lag(self, model: str, *, namespace: str | None = None) -> dict[str, Behind]:
        matchers = f"model={quote(model)}" + (f",namespace={quote(namespace)}" if namespace is not None else "")
        # A partition moving between workers may be reported by both for a scrape: count it once.
        partitions = f"max by (version, topic, partition) ({STREAM_LAG.name}{{{matchers}}})"
        records, owned = await asyncio.gather(
            self._instant(f"sum by (version) ({partitions})"), self._instant(f"count by (version) ({partitions})")
        )
        counted = {labels.get("version"): round(value) for labels, value in owned}
        return {
            labels["version"]: Behind(round(value), counted.get(labels["version"], 0))
            for labels, value in records
            if "version" in labels
        }

    async def _instant(self, query: str) -> list[tuple[dict[str, str], float]]:
        data = await self._query(query, datetime.now(UTC).timestamp())
        try:
            return [(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise MetricsUnavailableError(f"Prometheus answered an unreadable vector: {error!r}") from None

    async def healthy(self) -> bool:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.get(f"{self.url}/-/ready") as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _query(self, query: str, at: float) -> Any:
        form = {"query": query, "time": f"{at:.3f}", "timeout": f"{max(1, round(self.timeout * 1000))}ms"}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.post(f"{self.url}/api/v1/query", data=form) as response,
            ):
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = f"no answer within {self.timeout:g} s" if isinstance(error, TimeoutError) else repr(error)
            raise MetricsUnavailableError(f"Prometheus at {self.url}: {reason}") from error
        try:
            body = json.loads(text)
        except ValueError:
            raise MetricsUnavailableError(f"Prometheus at {self.url} answered {status} with {text[:200]!r}") from None
        if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            detail = f"{body.get('errorType')}: {body.get('error')}" if isinstance(body, dict) else text[:200]
            raise MetricsUnavailableError(f"Prometheus at {self.url} refused {query!r} ({status}, {detail})")
        return body.get("data")


def selector(model: str, version: str, namespace: str | None = None) -> str:
    """The series selector for one version of one model (and only its pods in `namespace`, when given)."""
    return _matchers(model, version, namespace, f'__name__=~"{NAMES}"')


def _matchers(model: str, version: str, namespace: str | None, *first: str) -> str:
    """`{model=..., version=...[, namespace=...]}`, after any `first` matchers."""
    found = [*first, f"model={quote(model)}", f"version={quote(version)}"]
    if namespace is not None:
        found.append(f"namespace={quote(namespace)}")
    return "{" + ",".join(found) + "}"
