"""The operator's monitor client against answers a monitor should never give: every malformed or impossible answer
is 'metrics unavailable' (the guardrail waits, saying why), never a number it then trusts."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from steward_operator.evidence import Losses, MetricsUnavailableError
from steward_operator.evidence.monitor import Monitor

UNTIL = datetime(2026, 12, 1, tzinfo=UTC)
SINCE = UNTIL - timedelta(days=2)


def _losses(answer: Any, status: int = 200) -> dict[str, Losses]:
    """What the client makes of `answer`, served by a monitor on loopback."""

    async def serve() -> dict[str, Losses]:
        asked: list[dict[str, str]] = []

        async def quality(request: web.Request) -> web.Response:
            asked.append(dict(request.query))
            text = answer if isinstance(answer, str) else json.dumps(answer)
            return web.Response(text=text, status=status, content_type="application/json")

        app = web.Application()
        app.router.add_get("/v1/quality", quality)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            found = await Monitor(f"http://127.0.0.1:{port}").losses("churn", "accuracy", SINCE, UNTIL, namespace="ml")
        finally:
            await runner.cleanup()
        assert asked == [{"namespace": "ml", "model": "churn", "since": SINCE.isoformat(), "until": UNTIL.isoformat()}]
        return found

    return asyncio.run(serve())


def _version(**loss: Any) -> dict[str, Any]:
    return {"versions": {"v2": {"losses": {"accuracy": loss}}}}


def test_each_versions_losses_for_the_metric_are_read() -> None:
    answer = {
        "versions": {
            "v1": {"losses": {"accuracy": {"count": 900, "mean": 0.1, "variance": 0.09}}},
            "v2": {"losses": {"logLoss": {"count": 5, "mean": 0.3, "variance": 0.01}}},
        }
    }
    assert _losses(answer) == {"v1": Losses(900, 0.1, 0.09)}


@pytest.mark.parametrize(
    "answer",
    [
        "not json",
        [],
        {"versions": []},
        {"versions": {"v2": {"losses": []}}},
        _version(count=-1, mean=0.1, variance=0.1),
        _version(count=True, mean=0.1, variance=0.1),
        _version(count=1.5, mean=0.1, variance=0.1),
        _version(count=10, mean="0.1", variance=0.1),
        _version(count=10, mean=0.1, variance=-0.5),
        _version(count=10, mean=float("nan"), variance=0.1),
        _version(count=10, mean=0.1),
    ],
    ids=[
        "not json",
        "a list",
        "versions a list",
        "losses a list",
        "negative count",
        "boolean count",
        "fractional count",
        "mean a string",
        "negative variance",
        "NaN mean",
        "no variance",
    ],
)
def test_an_answer_that_is_no_losses_is_metrics_unavailable(answer: Any) -> None:
    with pytest.raises(MetricsUnavailableError, match=r"the monitor at http://127\.0\.0\.1"):
        _losses(answer)


def test_a_monitor_that_refuses_is_metrics_unavailable() -> None:
    with pytest.raises(MetricsUnavailableError, match="answered 400"):
        _losses({"error": "give the model"}, status=400)
