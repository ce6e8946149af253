"""The monitor's HTTP API: prediction events in (a predictor token), outcome labels in (the outcome token; JSON, CSV
or Parquet), health and Prometheus metrics out.

Each record of a request is stored or refused on its own, and the answer lists the refusals. An answer is sent
only once what it carried is committed, so a client that got a 200 never loses an event to a restart; a client
that got no answer sends again, and the store recognises what it already has. To stay fast, concurrent requests
are committed together: one transaction for whatever arrived meanwhile. Bodies are parsed on worker threads, so
a large upload never keeps /healthz waiting."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import prometheus_client
from aiohttp import web

from steward_monitor import records
from steward_monitor.exporting import Metrics, Version
from steward_monitor.pairing import compare
from steward_monitor.quality import Quality, assess
from steward_monitor.records import Admission, Batch, Outcome, Prediction, RecordError, TooLargeError
from steward_monitor.stores import Store
from steward_monitor.tokens import IngestKey
from steward_monitor.watching import DriftWatch, PrometheusUnavailableError

MAX_BODY = 64 * 1024 * 1024
"""Largest request body accepted, uploads included."""
MAX_BATCH = 20_000
"""Most records committed in one transaction."""
MAX_LISTED = 100
"""Most refusals listed in an answer (all are counted)."""
UPLOAD_TYPES = {"text/csv": "csv", "application/vnd.apache.parquet": "parquet", "application/x-parquet": "parquet"}
Record = TypeVar("Record")

logger = logging.getLogger(__name__)


class _TooLarge(web.HTTPClientError):
    """413 for too many records, rows or columns (aiohttp's own counts bytes)."""

    status_code = 413


@dataclass(frozen=True)
class Written:
    """How many of a request's records were new, and how many were stored already (sent again)."""

    stored: int
    duplicates: int


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
        if not predictions and not outcomes:
            return Written(0, 0), Written(0, 0)
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
            await self._settle(batch)

    async def _settle(self, batch: list[_Pending]) -> None:
        """Commit a batch and answer each of its requests."""
        try:
            results = await asyncio.to_thread(self._commit, batch)
        except Exception as error:
            if len(batch) > 1:
                # Whatever in one request broke the shared transaction must not fail the others: each on its own.
                for pending in batch:
                    await self._settle([pending])
                return
            logger.exception("committing %d records failed", len(batch[0].predictions) + len(batch[0].outcomes))
            if not batch[0].done.done():
                batch[0].done.set_exception(error)
            return
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


def assess_newest(store: Store, since: datetime, metrics: Metrics) -> dict[Version, Quality]:
    """The quality of the versions with predictions since `since` whose gauges are exported: the ones whose latest
    prediction is the most recent."""
    shown = metrics.newest("quality", store.versions(since))
    return {
        (namespace, model, version): assess(rows)
        for namespace, model in sorted({version[:2] for version in shown})
        for version, rows in store.scored(namespace, model, since).items()
        if (namespace, model, version) in shown
    }


@dataclass(frozen=True)
class Intake:
    """Who may send what, and what is admitted. Predictions need a token derived from `ingest_key` for their
    model; KServe's payload logger can send none, so its events are taken only with `unauthenticated_events`.
    Outcomes need `outcome_token`. Times more than `clock_skew` ahead or older than `retention` are refused, and
    a request carries at most `max_records` records (or rows)."""

    outcome_token: str | None = None
    ingest_key: IngestKey | None = None
    unauthenticated_events: bool = False
    retention: timedelta = timedelta(days=180)
    clock_skew: timedelta = timedelta(minutes=5)
    max_records: int = 100_000

    def admission(self, scope: tuple[str, str] | None = None) -> Admission:
        """What a request arriving now is held to."""
        return Admission(datetime.now(UTC), self.retention, self.clock_skew, self.max_records, scope)


@dataclass
class Service:
    """What the routes share: the store, its ingestor, the metrics and who may send what."""

    store: Store
    intake: Intake
    drift: DriftWatch | None = None
    metrics: Metrics = field(default_factory=Metrics)
    ingestor: Ingestor = field(init=False)

    def __post_init__(self) -> None:
        self.ingestor = Ingestor(self.store, self.metrics)


SERVICE = web.AppKey("service", Service)


def application(
    store: Store,
    intake: Intake,
    *,
    quality_window: timedelta,
    quality_interval: float = 60.0,
    max_exported_versions: int = 500,
    drift: DriftWatch | None = None,
) -> web.Application:
    """The monitor's routes, taking in what `intake` allows. Quality gauges cover predictions of the last
    `quality_window`, recomputed every `quality_interval` seconds, for at most `max_exported_versions` versions.
    With `drift`, live traffic is judged for drift every window."""
    service = Service(store, intake, drift, Metrics(max_exported_versions))
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVICE] = service

    async def running(_: web.Application) -> AsyncIterator[None]:
        service.ingestor.start()
        tasks = [asyncio.create_task(_refresh_quality(service, quality_window, quality_interval), name="quality")]
        if service.drift is not None:
            tasks.append(asyncio.create_task(_watch_drift(service, service.drift), name="drift"))
        yield
        for task in tasks:
            task.cancel()
        await service.ingestor.stop()

    app.cleanup_ctx.append(running)
    app.router.add_post("/v1/predictions", _post_predictions)
    app.router.add_post("/v1/outcomes", _post_outcomes)
    app.router.add_post("/v1/events", _post_event)
    app.router.add_get("/v1/quality", _get_quality)
    app.router.add_get("/v1/drift", _get_drift)
    app.router.add_get("/v1/pairs", _get_pairs)
    app.router.add_get("/healthz", _health)
    app.router.add_get("/metrics", _exposition)
    return app


async def _refresh_quality(service: Service, window: timedelta, interval: float) -> None:
    while True:
        try:
            assessed = await asyncio.to_thread(
                assess_newest, service.store, datetime.now(UTC) - window, service.metrics
            )
            service.metrics.show(assessed)
        except Exception:  # The next round tries again; the API keeps serving.
            logger.exception("computing quality failed")
        await asyncio.sleep(interval)


async def _watch_drift(service: Service, watch: DriftWatch) -> None:
    while True:
        await asyncio.sleep(watch.tick())
        try:
            judged = await watch.step()
        except PrometheusUnavailableError as error:
            service.metrics.drift_up.set(0)
            logger.warning("drift window skipped: %s", error)
            continue
        service.metrics.drift_up.set(1)
        service.metrics.show_drift(judged)


async def _post_predictions(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    scope = _predictor_scope(request, service.intake.ingest_key)
    data = await _json_body(request)
    admission = service.intake.admission(scope)
    batch = await _parsed(service, "prediction", lambda: records.predictions(_decoded(data), admission))
    written, _ = await service.ingestor.write(batch.records, [])
    return _answer(service, "prediction", batch, written)


async def _post_event(request: web.Request) -> web.Response:
    """KServe's payload logger: point an InferenceService's `logger.url` here, naming the model and version
    (`/v1/events?namespace=N&model=M&version=V`). It presents no credentials: taken only when the monitor was
    started to accept that."""
    service = request.app[SERVICE]
    if not service.intake.unauthenticated_events:
        raise _failure(
            web.HTTPForbidden,
            "CloudEvents carry no credentials, and the monitor was started without "
            "--accept-unauthenticated-events: have the predictors report instead (a predictor token)",
        )
    query, headers, data = request.query, request.headers, await request.read()
    admission = service.intake.admission()
    batch = await _parsed(
        service,
        "prediction",
        lambda: records.cloud_event(
            headers,
            _decoded(data or b"null"),
            admission,
            namespace=query.get("namespace", ""),
            model=query.get("model", ""),
            version=query.get("version", ""),
        ),
    )
    if not batch.records and not batch.refusals:
        ignored = "a request event carries no prediction"
        return web.json_response({**_summary(batch, Written(0, 0)), "ignored": ignored})
    written, _ = await service.ingestor.write(batch.records, [])
    return _answer(service, "prediction", batch, written)


async def _post_outcomes(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    _authorize(request, service.intake.outcome_token)
    namespace, model = request.query.get("namespace", ""), request.query.get("model")
    admission = service.intake.admission()
    form = UPLOAD_TYPES.get(request.content_type)
    if form is not None:
        upload = await request.read()
        batch = await _parsed(
            service,
            "outcome",
            lambda: records.outcome_table(upload, form, admission, namespace=namespace, model=model),
        )
    else:
        data = await _json_body(request)
        batch = await _parsed(
            service,
            "outcome",
            lambda: records.outcomes(_decoded(data), admission, namespace=namespace, model=model),
        )
    _, written = await service.ingestor.write([], batch.records)
    return _answer(service, "outcome", batch, written)


async def _parsed(service: Service, kind: str, parse: Callable[[], Batch[Record]]) -> Batch[Record]:
    """The records of a body, parsed on a worker thread; a request that cannot be read at all is refused whole."""
    try:
        return await asyncio.to_thread(parse)
    except TooLargeError as error:
        service.metrics.events.labels(kind, "rejected").inc()
        raise _failure(_TooLarge, str(error)) from None
    except RecordError as error:
        service.metrics.events.labels(kind, "rejected").inc()
        raise _failure(web.HTTPBadRequest, str(error)) from None


def _answer(service: Service, kind: str, batch: Batch[Any], written: Written) -> web.Response:
    """What became of a request's records; nothing stored and something refused: a 400."""
    service.metrics.events.labels(kind, "rejected").inc(len(batch.refusals))
    if batch.refusals and not batch.records:
        return web.json_response({"error": batch.refusals[0].reason, **_summary(batch, written)}, status=400)
    return web.json_response(_summary(batch, written))


def _summary(batch: Batch[Any], written: Written) -> dict[str, Any]:
    """How many records were new, were there already, and were refused, with the (first) refusals listed."""
    return {
        "stored": written.stored,
        "duplicates": written.duplicates,
        "refused": len(batch.refusals),
        "refusals": [{"index": refusal.index, "error": refusal.reason} for refusal in batch.refusals[:MAX_LISTED]],
    }


async def _get_quality(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    model = request.query.get("model")
    if not model:
        raise _bad("give the model: /v1/quality?model=NAME[&namespace=NS][&since=T][&until=T] (RFC 3339 times)")
    namespace = request.query.get("namespace", "")
    since, until = _moment(request, "since"), _moment(request, "until")
    scored = await asyncio.to_thread(service.store.scored, namespace, model, since, until)
    versions = {version: assess(rows).as_json() for version, rows in sorted(scored.items())}
    return web.json_response({"namespace": namespace, "model": model, "versions": versions})


async def _get_pairs(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    query = request.query
    missing = [name for name in ("model", "incumbent", "challenger") if not query.get(name)]
    if missing:
        raise _bad(f"give {', '.join(missing)}: /v1/pairs?model=M&incumbent=V1&challenger=V2[&namespace=N][&since=T]")
    pairs = await asyncio.to_thread(
        service.store.pairs,
        query.get("namespace", ""),
        query["model"],
        query["incumbent"],
        query["challenger"],
        _moment(request, "since"),
    )
    found = compare(pairs)
    return web.json_response(
        {
            "namespace": query.get("namespace", ""),
            "model": query["model"],
            "incumbent": query["incumbent"],
            "challenger": query["challenger"],
            "pairs": found.pairs,
            "agreement": found.agreement,
            "disagreements": found.disagreements,
            "meanScoreDifference": found.mean_score_difference,
            "labelled": found.labelled,
            "incumbentAccuracy": found.incumbent_accuracy,
            "challengerAccuracy": found.challenger_accuracy,
            "onlyIncumbentRight": found.only_incumbent,
            "onlyChallengerRight": found.only_challenger,
            "mcnemarPValue": found.p_value,
        }
    )


async def _get_drift(request: web.Request) -> web.Response:
    watch = request.app[SERVICE].drift
    if watch is None:
        raise _failure(web.HTTPServiceUnavailable, "drift is off: the monitor was started without --prometheus-url")
    namespace, model = request.query.get("namespace", ""), request.query.get("model")
    versions = {
        version: {
            "time": drift.time.isoformat(),
            "alerting": drift.alerting,
            "features": {
                feature.name: {
                    "psi": feature.psi,
                    "pValue": feature.p_value,
                    "samples": feature.samples,
                    "level": feature.level,
                }
                for feature in drift.features
            },
        }
        for (found_namespace, found_model, version), drift in sorted(watch.latest.items())
        if found_namespace == namespace and (model is None or found_model == model)
    }
    return web.json_response({"namespace": namespace, "model": model, "versions": versions})


async def _health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _exposition(request: web.Request) -> web.Response:
    registry = request.app[SERVICE].metrics.registry
    return web.Response(body=prometheus_client.generate_latest(registry), content_type="text/plain")


async def _json_body(request: web.Request) -> bytes:
    if request.content_type != "application/json":
        raise _failure(
            web.HTTPUnsupportedMediaType, f"send application/json, not {request.content_type or 'no content type'}"
        )
    return await request.read()


def _decoded(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise RecordError(f"the body is not JSON: {error}") from None


def _predictor_scope(request: web.Request, key: IngestKey | None) -> tuple[str, str]:
    """The (namespace, model) whose predictions the request's token may send."""
    if key is None:
        raise _failure(
            web.HTTPServiceUnavailable,
            "predictions are refused: the monitor was started without an ingest key (--ingest-key-file or "
            "STEWARD_MONITOR_INGEST_KEY_FILE: a file holding the key predictor tokens are derived from)",
        )
    scope = key.scope(request.headers.get("Authorization", ""))
    if scope is None:
        raise _failure(
            web.HTTPUnauthorized,
            "send the model's predictor token: Authorization: Bearer <namespace>/<model>/<digest>",
            headers={"WWW-Authenticate": 'Bearer realm="steward-monitor"'},
        )
    return scope


def _authorize(request: web.Request, token: str | None) -> None:
    if token is None:
        raise _failure(web.HTTPServiceUnavailable, "outcomes are disabled: the monitor was started without a token")
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer ") or not hmac.compare_digest(
        given.removeprefix("Bearer ").encode(), token.encode()
    ):
        raise _failure(
            web.HTTPUnauthorized,
            "send the monitor's token: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": 'Bearer realm="steward-monitor"'},
        )


def _moment(request: web.Request, name: str) -> datetime | None:
    """An RFC 3339 time from the query string; a 400 naming the parameter when it is not one."""
    if name not in request.query:
        return None
    try:
        return records.moment(request.query[name])
    except RecordError as error:
        raise _bad(f"{name}: {error}") from None


def _bad(message: str) -> web.HTTPException:
    return _failure(web.HTTPBadRequest, message)


def _failure(kind: Callable[..., web.HTTPException], message: str, **details: Any) -> web.HTTPException:
    """An error answer of `kind` whose JSON body says what was wrong."""
    return kind(text=json.dumps({"error": message}), content_type="application/json", **details)
