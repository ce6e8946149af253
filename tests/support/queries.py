"""Instant queries of a test's own Prometheus, over its HTTP API."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from steward_harness.prometheus import Prometheus


def instant(prometheus: Prometheus, expression: str, at: float | None = None) -> list[Any]:
    """The series `expression` yields now, or at `at` (unix seconds) when given."""
    arguments = {"query": expression, **({"time": f"{at:.3f}"} if at is not None else {})}
    url = f"{prometheus.url}/api/v1/query?{urllib.parse.urlencode(arguments)}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 -- the test's own Prometheus
        result: list[Any] = json.loads(response.read())["data"]["result"]
    return result
