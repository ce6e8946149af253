"""What Steward's monitor joined, read from it: paired answers (GET /v1/pairs), both versions' answers to the same
requests, which shadow traffic gives the monitor under one request id, and on matured outcomes which of them was
right; and each version's losses on its matured outcomes (GET /v1/quality)."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import aiohttp

from steward_operator.evidence.base import Losses, MetricsUnavailableError, PairCounts

DEFAULT_TIMEOUT = 5.0
_COUNTS = {
    "pairs": "pairs",
    "disagreements": "disagreements",
    "labelled": "labelled",
    "only_incumbent": "onlyIncumbentRight",
    "only_challenger": "onlyChallengerRight",
}


class Monitor:
    """Reads pairs and losses from the monitor at `url`."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    async def pairs(
        self, model: str, incumbent: str, challenger: str, since: datetime, *, namespace: str
    ) -> PairCounts:
        if since.tzinfo is None:
            raise ValueError(f"pairs are read since an aware datetime, not {since!r}")
        query = {
            "namespace": namespace,
            "model": model,
            "incumbent": incumbent,
            "challenger": challenger,
            "since": since.isoformat(),
        }
        body = await self._get("/v1/pairs", query, "pairs")
        try:
            found = {field: body[key] for field, key in _COUNTS.items()}
        except (KeyError, TypeError) as error:
            raise MetricsUnavailableError(f"the monitor at {self.url} answered unreadable pairs: {error!r}") from None
        if not all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in found.values()):
            raise MetricsUnavailableError(f"the monitor at {self.url} answered counts that are no counts: {found}")
        counts = PairCounts(**found)
        if counts.disagreements > counts.pairs or counts.labelled > counts.pairs:
            raise MetricsUnavailableError(f"the monitor at {self.url} answered inconsistent counts: {found}")
        if counts.only_incumbent + counts.only_challenger > counts.labelled:
            raise MetricsUnavailableError(f"the monitor at {self.url} answered inconsistent counts: {found}")
        return counts

    async def losses(
        self, model: str, metric: str, since: datetime, until: datetime, *, namespace: str
    ) -> dict[str, Losses]:
        if since.tzinfo is None or until.tzinfo is None:
            raise ValueError(f"losses are read between aware datetimes, not {since!r} and {until!r}")
        query = {"namespace": namespace, "model": model, "since": since.isoformat(), "until": until.isoformat()}
        body = await self._get("/v1/quality", query, "quality")
        try:
            losses_by_version = {version: quality.get("losses", {}) for version, quality in body["versions"].items()}
            if not all(isinstance(losses, dict) for losses in losses_by_version.values()):
                raise TypeError("losses that are not a mapping")
            found = {version: losses[metric] for version, losses in losses_by_version.items() if metric in losses}
        except (KeyError, TypeError, AttributeError) as error:
            raise MetricsUnavailableError(f"the monitor at {self.url} answered unreadable quality: {error!r}") from None
        losses = {version: _losses(loss) for version, loss in found.items()}
        refused = [version for version, loss in losses.items() if loss is None]
        if refused:
            raise MetricsUnavailableError(
                f"the monitor at {self.url} answered losses of {refused[0]} that are no losses: {found[refused[0]]}"
            )
        return {version: loss for version, loss in losses.items() if loss is not None}

    async def _get(self, path: str, query: dict[str, str], what: str) -> Any:
        """The JSON the monitor answers at `path`. Raises MetricsUnavailableError, naming `what` was asked for."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.get(f"{self.url}{path}", params=query) as response,
            ):
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = f"no answer within {self.timeout:g} s" if isinstance(error, TimeoutError) else repr(error)
            raise MetricsUnavailableError(f"the monitor at {self.url}: {reason}") from error
        if status != 200:
            raise MetricsUnavailableError(f"the monitor at {self.url} answered {status}: {text[:200]}")
        try:
            return json.loads(text)
        except ValueError as error:
            raise MetricsUnavailableError(f"the monitor at {self.url} answered unreadable {what}: {error!r}") from None


def _losses(found: Any) -> Losses | None:
    """The losses the monitor answered, or None when they are not a count and two finite numbers (the variance not
    negative)."""
    if not isinstance(found, dict):
        return None
    count, numbers = found.get("count"), [found.get("mean"), found.get("variance")]
    if not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
        return None
    mean, variance = (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
        for value in numbers
    )
    if not (math.isfinite(mean) and math.isfinite(variance) and variance >= 0):
        return None
    return Losses(count, mean, variance)
