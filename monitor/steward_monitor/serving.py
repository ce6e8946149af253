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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import prometheus_client
from aiohttp import web

from steward_monitor import records
from steward_monitor.pairing import compare
from steward_monitor.quality import Quality, assess
from steward_monitor.records import Outcome, Prediction, RecordError
from steward_monitor.stores import Store
from steward_monitor.watching import DriftWatch, PrometheusUnavailableError, VersionDrift

MAX_BODY = 64 * 1024 * 1024
"""Largest request body accepted, uploads included."""
MAX_BATCH = 20_000
"""Most records committed in one transaction."""
LEVELS = {"ok": 0, "warn": 1, "alert": 2}
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
        version = ["namespace", "model", "version"]
        self.quality = prometheus_client.Gauge(
            "steward_monitor_quality",
            "Quality of a model version on its predictions with known outcomes (accuracy, logLoss, rocAuc, mae, rmse).",
            [*version, "metric"],
            registry=self.registry,
        )
        self.predictions = prometheus_client.Gauge(
            "steward_monitor_predictions", "Predictions stored in the quality window.", version, registry=self.registry
        )
        self.labelled = prometheus_client.Gauge(
            "steward_monitor_labelled_predictions",
            "Predictions in the quality window whose outcome has arrived.",
            version,
            registry=self.registry,
        )
        self.label_delay = prometheus_client.Gauge(
            "steward_monitor_label_delay_seconds",
            "Time from prediction to outcome, over the labelled predictions in the quality window.",
            [*version, "quantile"],
            registry=self.registry,
        )

        feature = [*version, "feature"]
        self.drift_psi = prometheus_client.Gauge(
            "steward_monitor_drift_psi",
            "PSI of a feature (or __prediction__) in the last drift window against its training shares.",
            feature,
            registry=self.registry,
        )
        self.drift_level = prometheus_client.Gauge(
            "steward_monitor_drift_level",
            "Drift of a feature in the last window: 0 ok, 1 warn, 2 alert (PSI over the level and significant "
            "after Benjamini-Hochberg).",
            feature,
            registry=self.registry,
        )
        self.drift_alerting = prometheus_client.Gauge(
            "steward_monitor_drift_alerting",
            "1 while a feature's drift has reached the alert level in enough of the last windows (persistence).",
            feature,
            registry=self.registry,
        )
        self.drift_samples = prometheus_client.Gauge(
            "steward_monitor_drift_window_samples",
            "Values of a feature counted in the last drift window.",
            feature,
            registry=self.registry,
        )
        self.drift_up = prometheus_client.Gauge(
            "steward_monitor_drift_up",
            "1 when the last drift window could be read from Prometheus, 0 when not (no data is not no drift).",
            registry=self.registry,
        )

    def show_drift(self, judged: dict[tuple[str, str, str], VersionDrift]) -> None:
        """Replace the drift gauges with the latest window."""
        for gauge in (self.drift_psi, self.drift_level, self.drift_alerting, self.drift_samples):
            gauge.clear()
        for version, drift in judged.items():
            for feature in drift.features:
                labels = (*version, feature.name)
                self.drift_psi.labels(*labels).set(feature.psi)
                self.drift_level.labels(*labels).set(LEVELS[feature.level])
                self.drift_alerting.labels(*labels).set(feature.name in drift.alerting)
                self.drift_samples.labels(*labels).set(feature.samples)

    def show(self, assessed: dict[tuple[str, str, str], Quality]) -> None:
        """Replace the quality gauges with `assessed`, so a version that is gone leaves no stale series."""
        for gauge in (self.quality, self.predictions, self.labelled, self.label_delay):
            gauge.clear()
        for (namespace, model, version), quality in assessed.items():
            labels = (namespace, model, version)
            self.predictions.labels(*labels).set(quality.predictions)
            self.labelled.labels(*labels).set(quality.labelled)
            for metric, value in quality.metrics.items():
                self.quality.labels(*labels, metric).set(value)
            for quantile, delay in (("0.5", quality.delay_p50), ("0.9", quality.delay_p90)):
                if delay is not None:
                    self.label_delay.labels(*labels, quantile).set(delay)


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


def assess_all(store: Store, since: datetime) -> dict[tuple[str, str, str], Quality]:
    """The quality of every version of every model with predictions since `since`."""
    return {
        (namespace, model, version): assess(rows)
        for namespace, model in store.models(since)
        for version, rows in store.scored(namespace, model, since).items()
    }


@dataclass
class Service:
    """What the routes share: the store, its ingestor, the metrics and the outcome token."""

    store: Store
    token: str | None
    drift: DriftWatch | None = None
    metrics: Metrics = field(default_factory=Metrics)
    ingestor: Ingestor = field(init=False)

    def __post_init__(self) -> None:
        self.ingestor = Ingestor(self.store, self.metrics)


SERVICE = web.AppKey("service", Service)


def application(
    store: Store,
    token: str | None,
    *,
    quality_window: timedelta,
    quality_interval: float = 60.0,
    drift: DriftWatch | None = None,
) -> web.Application:
    """The monitor's routes. Without a `token`, outcomes are refused (503): labels change quality figures, so
    only holders of the token may send them. Quality gauges cover predictions of the last `quality_window`,
    recomputed every `quality_interval` seconds. With `drift`, live traffic is judged for drift every window."""
    service = Service(store, token, drift)
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
            assessed = await asyncio.to_thread(assess_all, service.store, datetime.now(UTC) - window)
            service.metrics.show(assessed)
        except Exception:  # The next round tries again; the API keeps serving.
            logger.exception("computing quality failed")
        await asyncio.sleep(interval)


async def _watch_drift(service: Service, watch: DriftWatch) -> None:
    while True:
        await asyncio.sleep(watch.window_seconds)
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
    body = await _json(request)
    try:
        received = records.predictions(body, datetime.now(UTC))
    except RecordError as error:
        service.metrics.events.labels("prediction", "rejected").inc()
        raise _bad(str(error)) from None
    written, _ = await service.ingestor.write(received, [])
    return web.json_response({"stored": written.stored, "duplicates": written.duplicates})


async def _post_event(request: web.Request) -> web.Response:
    """KServe's payload logger: point an InferenceService's `logger.url` here, naming the model and version
    (`/v1/events?namespace=N&model=M&version=V`)."""
    service = request.app[SERVICE]
    query = request.query
    try:
        body = json.loads(await request.read() or b"null")
        received = records.cloud_event(
            request.headers,
            body,
            datetime.now(UTC),
            namespace=query.get("namespace", ""),
            model=query.get("model", ""),
            version=query.get("version", ""),
        )
    except (RecordError, ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError) as error:
        service.metrics.events.labels("prediction", "rejected").inc()
        raise _bad(str(error)) from None
    if not received:
        return web.json_response({"stored": 0, "duplicates": 0, "ignored": "a request event carries no prediction"})
    written, _ = await service.ingestor.write(received, [])
    return web.json_response({"stored": written.stored, "duplicates": written.duplicates})


async def _post_outcomes(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    _authorize(request, service.token)
    now = datetime.now(UTC)
    namespace, model = request.query.get("namespace", ""), request.query.get("model")
    kind = request.content_type
    try:
        if kind in UPLOAD_TYPES:
            data = await request.read()
            received = records.outcome_table(data, UPLOAD_TYPES[kind], now, namespace=namespace, model=model)
        else:
            received = records.outcomes(await _json(request), now, namespace=namespace, model=model)
    except RecordError as error:
        service.metrics.events.labels("outcome", "rejected").inc()
        raise _bad(str(error)) from None
    _, written = await service.ingestor.write([], received)
    return web.json_response({"stored": written.stored, "duplicates": written.duplicates})


async def _get_quality(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    model = request.query.get("model")
    if not model:
        raise _bad("give the model: /v1/quality?model=NAME[&namespace=NS][&since=T][&until=T] (RFC 3339 times)")
    namespace = request.query.get("namespace", "")
    since, until = _moment(request, "since"), _moment(request, "until")
    scored = await asyncio.to_thread(service.store.scored, namespace, model, since, until)
    versions = {version: _quality_json(assess(rows)) for version, rows in sorted(scored.items())}
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
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": "drift is off: the monitor was started without --prometheus-url"}),
            content_type="application/json",
        )
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


def _quality_json(quality: Quality) -> dict[str, Any]:
    return {
        "kind": quality.kind,
        "predictions": quality.predictions,
        "labelled": quality.labelled,
        "coverage": quality.coverage,
        "labelDelaySeconds": {"p50": quality.delay_p50, "p90": quality.delay_p90},
        "metrics": quality.metrics,
    }


def _moment(request: web.Request, name: str) -> datetime | None:
    """An RFC 3339 time from the query string; a 400 naming the parameter when it is not one."""
    if name not in request.query:
        return None
    try:
        return records.moment(request.query[name])
    except RecordError as error:
        raise _bad(f"{name}: {error}") from None


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")
