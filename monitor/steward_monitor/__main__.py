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
from steward_monitor.serving import application
from steward_monitor.stores import Store
from steward_monitor.watching import DriftWatch

PURGE_INTERVAL_SECONDS = 3600.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="steward-monitor",
        description="Store prediction events and late-arriving outcomes, keyed by request id. "
        "POST /v1/predictions (JSON), POST /v1/outcomes (JSON, CSV or Parquet; bearer token), "
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
        help="seconds per drift window (default %(default)g)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        token = args.token_file.read_text().strip() if args.token_file else None
        if token == "":
            raise ValueError(f"{args.token_file} is empty")
        store = Store(args.store)
    except (OSError, ValueError) as error:
        print(f"steward-monitor: {error}", file=sys.stderr)
        return 2
    retention = timedelta(days=args.retention_days)
    drift = None
    if args.prometheus_url:
        drift = DriftWatch(args.prometheus_url, Thresholds(), args.drift_window)
    app = application(
        store,
        token,
        quality_window=timedelta(days=args.quality_window_days),
        quality_interval=args.quality_interval,
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


async def _purge_forever(store: Store, retention: timedelta) -> None:
    while True:
        gone = await asyncio.to_thread(store.purge, datetime.now(UTC) - retention)
        if gone:
            logging.getLogger(__name__).info("retention: deleted %d records older than %s", gone, retention)
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
