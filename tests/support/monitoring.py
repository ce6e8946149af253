"""Talking to a steward-monitor the way its integration tests do: prediction events to send, the answer the monitor
gives for what it stored, and what its store holds, read straight from the database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from steward_harness.monitors import Monitor
from steward_harness.servers import http_get
from steward_monitor.stores import OUTCOMES, PREDICTIONS

TOKEN = {"Authorization": "Bearer outcome-token"}


def predictions(count: int, start: int = 0, model: str = "churn") -> list[dict[str, Any]]:
    made = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    return [
        {
            "model": model,
            "namespace": "ml",
            "version": "v2",
            "variant": "shadow" if index % 2 else "incumbent",
            "requestId": f"request-{index}",
            "prediction": "yes" if index % 3 else "no",
            "score": (index % 10) / 10,
            "features": {"age": index, "plan": "basic"},
            "time": made,
        }
        for index in range(start, start + count)
    ]


def stored_counts(store: str) -> dict[str, int]:
    engine = sa.create_engine(store)
    try:
        with engine.connect() as connection:
            return {
                table.name: connection.scalar(sa.select(sa.func.count()).select_from(table)) or 0
                for table in (PREDICTIONS, OUTCOMES)
            }
    finally:
        engine.dispose()


def expected_answer(stored: int, duplicates: int, *refusals: tuple[int, str]) -> dict[str, Any]:
    return {
        "stored": stored,
        "duplicates": duplicates,
        "refused": len(refusals),
        "refusals": [{"index": index, "error": error} for index, error in refusals],
    }


def send_predictions(
    monitor: Monitor, body: object, namespace: str = "ml", model: str = "churn"
) -> tuple[int, dict[str, Any]]:
    """Status and answer of predictions posted with the token of `model` in `namespace`."""
    status, _, text = monitor.post("/v1/predictions", body, monitor.authorization(namespace, model))
    return status, json.loads(text)


def get_text(url: str) -> str:
    status, body = http_get(url)
    assert status == 200
    return body


def stored_rows(store: str, *columns: sa.ColumnElement[Any]) -> list[tuple[Any, ...]]:
    """The stored values of `columns`, read straight from the store."""
    engine = sa.create_engine(store)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.select(*columns))]
    finally:
        engine.dispose()
