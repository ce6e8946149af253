"""Paired answers, read from Steward's monitor (GET /v1/pairs): both versions' answers to the same requests, which
shadow traffic gives the monitor under one request id, and on matured outcomes which of them was right."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import aiohttp

from steward_operator.evidence.base import MetricsUnavailableError, PairCounts

DEFAULT_TIMEOUT = 5.0
_COUNTS = {
    "pairs": "pairs",
    "disagreements": "disagreements",
    "labelled": "labelled",
    "only_incumbent": "onlyIncumbentRight",
    "only_challenger": "onlyChallengerRight",
}


class Monitor:
    """Reads pairs from the monitor at `url`."""

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
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.get(f"{self.url}/v1/pairs", params=query) as response,
            ):
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = f"no answer within {self.timeout:g} s" if isinstance(error, TimeoutError) else repr(error)
            raise MetricsUnavailableError(f"the monitor at {self.url}: {reason}") from error
        if status != 200:
            raise MetricsUnavailableError(f"the monitor at {self.url} answered {status}: {text[:200]}")
        try:
            body: Any = json.loads(text)
            found = {field: body[key] for field, key in _COUNTS.items()}
        except (ValueError, KeyError, TypeError) as error:
            raise MetricsUnavailableError(f"the monitor at {self.url} answered unreadable pairs: {error!r}") from None
        if not all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in found.values()):
            raise MetricsUnavailableError(f"the monitor at {self.url} answered counts that are no counts: {found}")
        counts = PairCounts(**found)
        if counts.disagreements > counts.pairs or counts.labelled > counts.pairs:
            raise MetricsUnavailableError(f"the monitor at {self.url} answered inconsistent counts: {found}")
        if counts.only_incumbent + counts.only_challenger > counts.labelled:
            raise MetricsUnavailableError(f"the monitor at {self.url} answered inconsistent counts: {found}")
        return counts
