"""Reporting every prediction to the monitor, in the background: batched, retried while the monitor is away, and
never in the way of serving. The queue is bounded: a monitor away long enough to fill it costs the oldest
events, which are counted; a batch run, which can wait, waits for room first. The monitor stores or refuses each
event on its own; refused ones are logged with the reason and counted, and never cost the rest of their batch."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import Counter as Tally
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter

logger = logging.getLogger("steward.predictor")

CAPACITY = 100_000
"""Events held while the monitor cannot be reached."""
BATCH = 500
"""Most events in one request to the monitor."""
INTERVAL = 0.5
"""Longest an event waits before it is sent, in seconds."""
MAX_BACKOFF = 30.0
LOGGED = 5
"""Refusals quoted in the log line of one batch (all are counted)."""


class Reporter:
    """Sends `{"model", "namespace", "version", "variant", "requestId", "prediction", "score"}` events to the
    monitor's POST /v1/predictions from a thread of its own, presenting `token`: the monitor's token for this
    model (`namespace/model/digest`, which the operator derives from the monitor's ingest key). With `patience`,
    reporting waits up to that many seconds for room in a full queue before the oldest events go; once, should the
    monitor take nothing in that time."""

    def __init__(
        self,
        url: str,
        *,
        model: str,
        namespace: str,
        token: str | None = None,
        capacity: int = CAPACITY,
        patience: float = 0.0,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/v1/predictions"
        self.model, self.namespace = model, namespace
        self._headers = {"content-type": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        else:
            logger.warning("no token for the monitor: one that holds an ingest key refuses these prediction events")
        self._pending: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._patience = patience
        self.counted = Tally[str]()
        """Events sent, refused and dropped so far, as the counter below has them."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.events = Counter(
            "steward_predictor_reported_events",
            "Prediction events for the monitor: sent (stored, or stored already), refused by it (each with its "
            "reason in the log), or dropped when the queue was full while it was away.",
            ["result"],
            registry=registry,
        )
        self._thread = threading.Thread(target=self._send_forever, name="monitor-reporter", daemon=True)
        self._thread.start()

    def report(
        self,
        version: str,
        variant: str,
        request_id: str,
        predictions: np.ndarray,
        scores: np.ndarray | None,
        *,
        ids: Sequence[str] | None = None,
    ) -> None:
        """Queue one event per row, under `ids` (one per prediction) when given; otherwise a request of several
        rows gets ids `<request id>-<row>`, as batch scoring does."""
        several = len(predictions) > 1
        answers = predictions.tolist()
        probabilities = scores.tolist() if scores is not None else None
        events = [
            {
                "model": self.model,
                "namespace": self.namespace,
                "version": version,
                "variant": variant,
                "requestId": ids[row] if ids is not None else f"{request_id}-{row}" if several else request_id,
                "prediction": prediction,
                **({"score": probabilities[row]} if probabilities is not None else {}),
            }
            for row, prediction in enumerate(answers)
        ]
        capacity = self._pending.maxlen or 0
        with self._room:
            if self._patience and len(self._pending) + len(events) > capacity:
                self._wake.set()
                room = self._room.wait_for(
                    lambda: not self._pending or len(self._pending) + len(events) <= capacity, self._patience
                )
                if not room:  # The monitor took nothing for that long: it is away, and waiting again would not help.
                    logger.warning(
                        "the monitor took no prediction event for %g s: from now on the oldest go when the queue is "
                        "full",
                        self._patience,
                    )
                    self._patience = 0.0
            dropped = max(0, len(self._pending) + len(events) - capacity)
            self._pending.extend(events)
        self._count("dropped", dropped)
        if len(self._pending) >= BATCH:
            self._wake.set()

    @property
    def patient(self) -> bool:
        """Whether reporting still waits for room: until the monitor once took nothing for the whole patience."""
        return self._patience > 0

    @property
    def unsent(self) -> int:
        """Events still queued: after `close`, those the monitor never took."""
        return len(self._pending)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within `timeout`, trying again meanwhile when patient), then stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _send_forever(self) -> None:
        backoff = INTERVAL
        while True:
            self._wake.wait(INTERVAL)
            self._wake.clear()
            with self._room:
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                self._room.notify_all()
            if not batch:
                if self._stop.is_set():
                    return
                continue
            refused = self._post(batch)
            if refused is not None:
                self._count("sent", len(batch) - refused)
                self._count("refused", refused)
                backoff = INTERVAL
                if len(self._pending) >= BATCH or self._stop.is_set():
                    self._wake.set()
                continue
            with self._lock:
                # Back at the front, in order; anything beyond the capacity is the oldest, and goes.
                room = (self._pending.maxlen or 0) - len(self._pending)
                kept = batch[-room:] if room > 0 else []
                self._pending.extendleft(reversed(kept))
            self._count("dropped", len(batch) - len(kept))
            if self._stop.is_set() and not self._patience:
                return
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _count(self, result: str, events: int) -> None:
        if events:
            self.events.labels(result).inc(events)
            self.counted[result] += events

    def _post(self, batch: list[dict[str, Any]]) -> int | None:
        """How many events of the batch the monitor refused (sending them again would not help); None when it could
        not take the batch now (it may, later)."""
        request = urllib.request.Request(  # noqa: S310 -- the monitor's URL, from the operator
            self.endpoint, data=json.dumps(batch).encode(), method="POST", headers=self._headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return _refusals(batch, response.read(), unread=0)
        except urllib.error.HTTPError as error:
            if error.code == 401:
                logger.error("the monitor refused the token: %d prediction events lost (%s)", len(batch), _read(error))
                return len(batch)
            if 400 <= error.code < 500:  # Nothing of the batch was stored.
                _refusals(batch, _read(error), unread=len(batch))
                return len(batch)
            logger.warning("the monitor answered %d; prediction events wait", error.code)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            logger.warning("the monitor at %s cannot be reached (%s); prediction events wait", self.endpoint, error)
        return None


def _refusals(batch: list[dict[str, Any]], body: bytes, *, unread: int) -> int:
    """How many events the monitor's answer says it refused (`unread` when the answer says nothing readable), with
    the first refusals logged: which request, and why."""
    try:
        answer = json.loads(body)
        refused = max(0, min(len(batch), int(answer["refused"])))
        quoted = "; ".join(
            f"{_request_id(batch, refusal['index'])}: {refusal['error']}" for refusal in answer["refusals"][:LOGGED]
        )
    except (ValueError, TypeError, KeyError, IndexError):
        if unread:
            logger.error("the monitor refused %d prediction events: %s", unread, body[:500])
        return unread
    if refused:
        logger.error("the monitor refused %d of %d prediction events: %s", refused, len(batch), quoted)
    return refused


def _read(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read()
    except (OSError, http.client.HTTPException):
        return b""


def _request_id(batch: list[dict[str, Any]], index: int) -> str:
    """The request id of a refused event, as short as a log line needs."""
    return repr(str(batch[index].get("requestId", ""))[:80])
