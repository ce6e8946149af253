"""Waiting for a cluster to get somewhere, with the last thing seen when it does not."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
PATIENCE = 60.0
"""Seconds a wait allows by default: what takes seconds on an idle machine can take many times that on a loaded
one, and a wait that succeeds costs only the time it needed."""


def wait_until(check: Callable[[], T | None], timeout: float = PATIENCE, interval: float = 0.1) -> T:
    """Poll `check()` until it returns something truthy; raise TimeoutError with its last value otherwise."""
    deadline = time.monotonic() + timeout
    last = check()
    while not last:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f} s; last seen: {last!r}")
        time.sleep(interval)
        last = check()
    return last
