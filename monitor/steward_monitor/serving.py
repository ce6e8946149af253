"""The monitor's HTTP API: prediction events in, outcome labels in (bearer token; JSON, CSV or Parquet), health and
Prometheus metrics out.

An answer is sent only once what it carried is committed, so a client that got a 200 never loses an event
to a restart; a client that got no answer sends again, and the store recognises what it already has. To stay
fast, concurrent requests are committed together: one transaction for whatever arrived meanwhile."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import prometheus_client
from aiohttp import web

from steward_monitor import records
from steward_monitor.records import Outcome, Prediction, RecordError
from steward_monitor.stores import Store

MAX_BODY = 64 * 1024 * 1024
"""Largest request body accepted, uploads included."""
MAX_BATCH = 20_000
"""Most records committed in one transaction."""
UPLOAD_TYPES = {"text/csv": "csv", "application/vnd.apache.parquet": "parquet", "application/x-parquet": "parquet"}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Written:
    """How many of a request's records were new, and how many were stored already (sent again)."""

    stored: int
    duplicates: int


class Metrics:
    """The monitor's own metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.events = prometheus_client.Counter(
            "steward_monitor_events",
            "Records received, by kind (prediction, outcome) and result (stored, duplicate, rejected).",
            ["kind", "result"],
            registry=self.registry,
        )
        self.commit_seconds = prometheus_client.Histogram(
            "steward_monitor_commit_duration_seconds",
            "Time to commit one batch of records.",
            registry=self.registry,
        )
        self.batch_records = prometheus_client.Histogram(
            "steward_monitor_commit_records",
            "Records per committed batch.",
            buckets=(1, 10, 100, 1_000, 10_000, 100_000),
            registry=self.registry,
        )


@dataclass
class _Pending:
    predictions: list[Prediction]
    outcomes: list[Outcome]
    done: asyncio.Future[tuple[Written, Written]]


@dataclass
class Ingestor:
    """Commits what concurrent requests bring in shared transactions, on a worker thread, and tells each request
    what became of its own records."""

    store: Store
    metrics: Metrics
    _queue: asyncio.Queue[_Pending] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._commit_forever(), name="commit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def write(self, predictions: list[Prediction], outcomes: list[Outcome]) -> tuple[Written, Written]:
        done: asyncio.Future[tuple[Written, Written]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(predictions, outcomes, done))
        return await done

    async def _commit_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].predictions) + len(batch[0].outcomes)
            while not self._queue.empty() and size < MAX_BATCH:
                batch.append(self._queue.get_nowait())
                size += len(batch[-1].predictions) + len(batch[-1].outcomes)
            try:
                results = await asyncio.to_thread(self._commit, batch)
            except Exception as error:  # Every waiting request gets the failure.
                logger.exception("committing %d records failed", size)
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(error)
                continue
            for pending, result in zip(batch, results, strict=True):
                if not pending.done.done():
                    pending.done.set_result(result)

    def _commit(self, batch: list[_Pending]) -> list[tuple[Written, Written]]:
        """One transaction for the whole batch; each request's share of what was new is worked out after."""
        started = time.perf_counter()
        predictions = [record for pending in batch for record in pending.predictions]
        outcomes = [record for pending in batch for record in pending.outcomes]
        stored = self.store.write(predictions, outcomes)
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_records.observe(len(predictions) + len(outcomes))
        results = []
        for pending in batch:
            counts = []
            for kind, mine, new in (
                ("prediction", pending.predictions, stored[0]),
                ("outcome", pending.outcomes, stored[1]),
            ):
                fresh = 0
                for record in mine:
                    if record.key in new:
                        new.discard(record.key)  # The same event twice in one batch is new only once.
                        fresh += 1
                written = Written(fresh, len(mine) - fresh)
                self.metrics.events.labels(kind, "stored").inc(written.stored)
                self.metrics.events.labels(kind, "duplicate").inc(written.duplicates)
                counts.append(written)
            results.append((counts[0], counts[1]))
        return results


def application(store: Store, token: str | None, metrics: Metrics | None = None) -> web.Application:
    """The monitor's routes. Without a `token`, outcomes are refused (503): labels change quality figures, so
    only holders of the token may send them."""
    metrics = metrics or Metrics()
    ingestor = Ingestor(store, metrics)
    app = web.Application(client_max_size=MAX_BODY)

    async def started(_: web.Application) -> None:
        ingestor.start()

    async def stopped(_: web.Application) -> None:
        await ingestor.stop()

    app.on_startup.append(started)
    app.on_cleanup.append(stopped)

    async def post_predictions(request: web.Request) -> web.Response:
        body = await _json(request)
        try:
            received = records.predictions(body, datetime.now(UTC))
        except RecordError as error:
            metrics.events.labels("prediction", "rejected").inc()
            raise _bad(str(error)) from None
        written, _ = await ingestor.write(received, [])
        return web.json_response({"stored": written.stored, "duplicates": written.duplicates})

    async def post_outcomes(request: web.Request) -> web.Response:
        _authorize(request, token)
        now = datetime.now(UTC)
        namespace, model = request.query.get("namespace", ""), request.query.get("model")
        kind = request.content_type
        try:
            if kind in UPLOAD_TYPES:
                received = records.outcome_table(
                    await request.read(), UPLOAD_TYPES[kind], now, namespace=namespace, model=model
                )
            else:
                received = records.outcomes(await _json(request), now, namespace=namespace, model=model)
        except RecordError as error:
            metrics.events.labels("outcome", "rejected").inc()
            raise _bad(str(error)) from None
        _, written = await ingestor.write([], received)
        return web.json_response({"stored": written.stored, "duplicates": written.duplicates})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def exposition(_: web.Request) -> web.Response:
        return web.Response(body=prometheus_client.generate_latest(metrics.registry), content_type="text/plain")

    app.router.add_post("/v1/predictions", post_predictions)
    app.router.add_post("/v1/outcomes", post_outcomes)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", exposition)
    return app


async def _json(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            text=json.dumps({"error": f"send application/json, not {request.content_type or 'no content type'}"}),
            content_type="application/json",
        )
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as error:
        raise _bad(f"the body is not JSON: {error}") from None


def _authorize(request: web.Request, token: str | None) -> None:
    if token is None:
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": "outcomes are disabled: the monitor was started without a token"}),
            content_type="application/json",
        )
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer ") or not hmac.compare_digest(
        given.removeprefix("Bearer ").encode(), token.encode()
    ):
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "send the monitor's token: Authorization: Bearer <token>"}),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="steward-monitor"'},
        )


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")
