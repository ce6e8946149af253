"""Monitor ingestion benchmark: prediction events per second through the monitor's HTTP API (concurrent clients
posting batches with their predictor token, every answer sent after its commit), side by side with the same events
written straight into the same kind of store in-process, on SQLite and on PostgreSQL.

Run: .venv/bin/python bench/monitor.py   (exits non-zero when a goal is missed)
Goal: at least 5,000 events/s into SQLite through the API, with batching."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from steward_harness.monitors import Monitor  # noqa: E402
from steward_harness.postgres import Postgres  # noqa: E402
from steward_monitor.records import Admission, predictions  # noqa: E402
from steward_monitor.stores import Store  # noqa: E402

GOAL_SQLITE = 5_000.0


def _events(count: int, offset: int) -> list[dict[str, object]]:
    made = datetime.now(UTC).isoformat()
    return [
        {
            "model": "churn",
            "namespace": "ml",
            "version": "v2",
            "requestId": f"request-{offset + index}",
            "prediction": "yes" if index % 3 else "no",
            "score": (index % 10) / 10,
            "features": {"age": index % 90, "plan": "basic", "tenure": index % 36},
            "time": made,
        }
        for index in range(count)
    ]


def through_api(monitor: Monitor, events: int, batch: int, clients: int) -> float:
    """Events per second posted by `clients` threads, `batch` events a request."""
    bodies = [json.dumps(_events(batch, start)).encode() for start in range(0, events, batch)]
    lanes = [bodies[index::clients] for index in range(clients)]
    headers = {"content-type": "application/json", **monitor.authorization("ml", "churn")}

    def post(lane: list[bytes]) -> None:
        for body in lane:
            request = urllib.request.Request(  # noqa: S310 -- the loopback monitor
                f"{monitor.url}/v1/predictions", data=body, method="POST", headers=headers
            )
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                if response.status != 200:
                    raise RuntimeError(f"the monitor answered {response.status}")

    threads = [threading.Thread(target=post, args=(lane,)) for lane in lanes]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return events / (time.perf_counter() - started)


def in_process(url: str, events: int, batch: int) -> float:
    """Events per second written by Store.write directly, one transaction per `batch` events: the ceiling the API
    is measured against."""
    store = Store(url)
    now = datetime.now(UTC)
    parsed = [predictions(_events(batch, start), Admission(now)).records for start in range(0, events, batch)]
    started = time.perf_counter()
    for records in parsed:
        store.write(records, [])
    rate = events / (time.perf_counter() - started)
    store.close()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per run (50000)")
    parser.add_argument("--batch", type=int, default=100, help="events per request (100)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="steward-bench-monitor-") as scratch, Postgres() as postgres:
        for kind in ("sqlite", "postgres"):

            def url_of(run: str, kind: str = kind) -> str:
                """A fresh store for each run."""
                if kind == "sqlite":
                    return f"sqlite:///{scratch}/{run}.db"
                _reset(postgres.url)
                return postgres.url

            direct = in_process(url_of("direct"), args.events, args.batch)
            with Monitor(url_of("api")) as monitor:
                api = through_api(monitor, args.events, args.batch, args.clients)
            rows.append((kind, api, direct))
    print(f"{args.events:,} prediction events, {args.batch} per request, {args.clients} clients")
    print(f"{'store':<10} {'API events/s':>14} {'in-process events/s':>21} {'API / in-process':>17}")
    for kind, api, direct in rows:
        print(f"{kind:<10} {api:>14,.0f} {direct:>21,.0f} {api / direct:>16.2f}x")
    sqlite_rate = rows[0][1]
    met = sqlite_rate >= GOAL_SQLITE
    print(f"goal: >= {GOAL_SQLITE:,.0f} events/s into SQLite through the API: {'met' if met else 'MISSED'}")
    return 0 if met else 1


def _reset(url: str) -> None:
    import sqlalchemy as sa  # noqa: PLC0415

    from steward_monitor.stores import METADATA  # noqa: PLC0415

    engine = sa.create_engine(url)
    METADATA.drop_all(engine)
    engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
