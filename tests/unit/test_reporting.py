"""The owner's report as files: an HTML page with its charts, written whole or not at all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from steward_operator.reporting import Monitored, write
from tests.conftest import REPOSITORY

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _body() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPOSITORY / "examples" / "online.yaml").read_text())
    body["metadata"]["namespace"] = "ml"
    body["status"] = {
        "phase": "Stable",
        "incumbent": {"version": "v2", "bundle": "s3://models/v2/"},
        "history": [
            {
                "version": "v1",
                "bundle": "s3://models/v1/",
                "started": (NOW - timedelta(days=60)).isoformat(),
                "ended": (NOW - timedelta(days=9)).isoformat(),
                "outcome": "replaced",
            },
            {"version": "v2", "bundle": "s3://models/v2/", "started": (NOW - timedelta(days=9)).isoformat()},
        ],
        "retrainings": [
            {
                "job": "churn-retrain-1",
                "reason": "drift",
                "message": "sustained drift in v1: <tenure>",
                "version": "v1",
                "started": (NOW - timedelta(days=10)).isoformat(),
                "outcome": "succeeded",
            }
        ],
    }
    return body


MONITORED = Monitored(
    quality={
        "versions": {
            "v1": {
                "predictions": 900,
                "labelled": 600,
                "coverage": 0.67,
                "labelDelaySeconds": {"p50": 86_400 * 30},
                "metrics": {"rocAuc": 0.91, "accuracy": 0.88},
            },
            "v2": {
                "predictions": 500,
                "labelled": 100,
                "coverage": 0.2,
                "labelDelaySeconds": {"p50": None},
                "metrics": {"rocAuc": 0.93},
            },
        }
    },
    drift={
        "versions": {
            "v2": {
                "alerting": ["tenure"],
                "features": {
                    "tenure": {"psi": 0.4, "pValue": 1e-9, "samples": 900, "level": "alert"},
                    "plan": {"psi": 0.01, "pValue": 0.6, "samples": 900, "level": "ok"},
                },
            }
        }
    },
)


def test_the_report_is_a_page_with_its_charts(tmp_path: Path) -> None:
    output = tmp_path / "churn-report"
    written = write(_body(), MONITORED, output, NOW)
    assert [path.name for path in written] == ["drift.png", "history.png", "index.html", "quality.png"]
    page = (output / "index.html").read_text()
    assert "report of 2026-11-25 12:00 UTC" in page
    assert "sustained drift in v1: &lt;tenure&gt;" in page  # Escaped, never markup.
    assert "rocAuc 0.91" in page
    assert ">tenure<" in page
    assert '<img src="drift.png"' in page
    for chart in ("drift.png", "history.png", "quality.png"):
        assert (output / chart).read_bytes().startswith(b"\x89PNG")


def test_an_unreadable_monitor_still_gives_the_release_history(tmp_path: Path) -> None:
    output = tmp_path / "report"
    write(_body(), Monitored(problem="connection refused"), output, NOW)
    page = (output / "index.html").read_text()
    assert "The monitor could not be read: connection refused" in page
    assert "No drift window has been judged" in page
    assert not (output / "drift.png").exists()


def test_a_report_is_replaced_whole_or_left_as_it_was(tmp_path: Path) -> None:
    output = tmp_path / "report"
    write(_body(), MONITORED, output, NOW)
    before = (output / "index.html").read_text()
    broken = Monitored(drift={"versions": {"v2": {"features": {"tenure": {"psi": "not a number", "level": "ok"}}}}})
    with pytest.raises((TypeError, ValueError)):
        write(_body(), broken, output, NOW)
    assert (output / "index.html").read_text() == before
    assert [path.name for path in tmp_path.iterdir()] == ["report"]  # Nothing half-written beside it.
