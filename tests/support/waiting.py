"""Waiting for a cluster to get somewhere, with the last thing seen when it does not."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Poll `check()` until it returns something truthy; raise TimeoutError with its last value otherwise."""
    deadline = time.monotonic() + timeout
    last = check()
    while not last:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f} s; last seen: {last!r}")
        time.sleep(interval)
        last = check()
    return last
