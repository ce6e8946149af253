"""steward-monitor: the monitor's HTTP service over its store."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from steward_monitor import settings
from steward_monitor.drifting import Thresholds
from steward_monitor.serving import Intake, application
from steward_monitor.stores import Store
from steward_monitor.tokens import IngestKey
from steward_monitor.watching import DriftWatch

PURGE_INTERVAL_SECONDS = 3600.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="steward-monitor",
        description="Store prediction events and late-arriving outcomes, keyed by request id. "
        "POST /v1/predictions (JSON; a predictor token), POST /v1/outcomes (JSON, CSV or Parquet; the outcome token), "
        "GET /healthz, GET /metrics.",
    )
    parser.add_argument("--store", default=settings.STORE, help="SQLAlchemy URL of the store (default %(default)s)")
    parser.add_argument("--port", type=int, default=settings.PORT, help="HTTP port (default %(default)s)")
    parser.add_argument(
        "--token-file",
        type=Path,
        default=Path(settings.TOKEN_FILE) if settings.TOKEN_FILE else None,
        help="file with the bearer token for outcomes (default: none, and outcomes are refused)",
    )
    parser.add_argument(
        "--ingest-key-file",
        type=Path,
        default=Path(settings.INGEST_KEY_FILE) if settings.INGEST_KEY_FILE else None,
        help="file with the key each model's predictor token is derived from (default: none, and predictions are "
        "refused)",
    )
    parser.add_argument(
        "--accept-unauthenticated-events",
        action="store_true",
        default=settings.ACCEPT_UNAUTHENTICATED_EVENTS,
        help="take KServe payload-logger CloudEvents on /v1/events, which carry no credentials: anyone who reaches "
        "the monitor can then write predictions for any model (default: refused)",
    )
    parser.add_argument(
        "--max-clock-skew",
        type=float,
        default=settings.MAX_CLOCK_SKEW_SECONDS,
        help="refuse records timed more than this many seconds ahead of the monitor's clock (default %(default)g)",
    )
    parser.add_argument(
        "--max-records",
        type=int,
        default=settings.MAX_RECORDS,
        help="most records (events, outcomes, rows of an upload) one request may carry (default %(default)d)",
    )
    parser.add_argument(
        "--max-exported-versions",
        type=int,
        default=settings.MAX_EXPORTED_VERSIONS,
        help="most model versions with gauges on /metrics; the least recently seen are left out (default %(default)d)",
    )
    parser.add_argument(
        "--retention-days",
        type=float,
        default=settings.RETENTION_DAYS,
        help="delete records older than this, hourly (default %(default)g)",
    )
    parser.add_argument(
        "--quality-window-days",
        type=float,
        default=settings.QUALITY_WINDOW_DAYS,
        help="the quality gauges cover predictions of this many days (default %(default)g)",
    )
    parser.add_argument(
        "--quality-interval",
        type=float,
        default=settings.QUALITY_INTERVAL_SECONDS,
        help="seconds between recomputations of the quality gauges (default %(default)g)",
    )
    parser.add_argument(
        "--prometheus-url",
        default=settings.PROMETHEUS_URL,
        help="the Prometheus scraping the predictors, read for drift (default: none, and no drift is computed)",
    )
    parser.add_argument(
        "--drift-window",
        type=float,
        default=settings.DRIFT_WINDOW_SECONDS,
        help="seconds per drift window, for versions whose ModelDeployment names none (spec.monitoring.drift.window;"
        " default %(default)g)",
    )
    args = parser.parse_args(argv)
    if args.max_records < 1 or args.max_exported_versions < 1 or args.max_clock_skew < 0:
        parser.error("--max-records and --max-exported-versions must be at least 1, --max-clock-skew at least 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    retention = timedelta(days=args.retention_days)
    try:
        ingest_key = _secret(args.ingest_key_file)
        intake = Intake(
            outcome_token=_secret(args.token_file),
            ingest_key=IngestKey(ingest_key) if ingest_key is not None else None,
            unauthenticated_events=args.accept_unauthenticated_events,
            retention=retention,
            clock_skew=timedelta(seconds=args.max_clock_skew),
            max_records=args.max_records,
        )
        store = Store(args.store)
    except (OSError, ValueError) as error:
        print(f"steward-monitor: {error}", file=sys.stderr)
        return 2
    if intake.ingest_key is None:
        logging.getLogger(__name__).warning("no --ingest-key-file: predictions are refused")
    if intake.unauthenticated_events:
        logging.getLogger(__name__).warning("/v1/events takes unauthenticated predictions for any model")
    drift = None
    if args.prometheus_url:
        drift = DriftWatch(args.prometheus_url, Thresholds(seconds=args.drift_window))
    app = application(
        store,
        intake,
        quality_window=timedelta(days=args.quality_window_days),
        quality_interval=args.quality_interval,
        max_exported_versions=args.max_exported_versions,
        drift=drift,
    )

    async def purging(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_purge_forever(store, retention))
        yield
        task.cancel()

    app.cleanup_ctx.append(purging)
    web.run_app(app, port=args.port, print=lambda text: logging.getLogger(__name__).info("%s", text))
    store.close()
    return 0


def _secret(path: Path | None) -> str | None:
    """A token or key from a file (a mounted Secret), read once; surrounding whitespace is not part of it."""
    if path is None:
        return None
    secret = path.read_text().strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


async def _purge_forever(store: Store, retention: timedelta) -> None:
    while True:
        gone = await asyncio.to_thread(store.purge, datetime.now(UTC) - retention)
        if gone:
            logging.getLogger(__name__).info("retention: deleted %d records older than %s", gone, retention)
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
