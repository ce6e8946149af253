"""A large request is scored off the event loop: while it runs, health and readiness probes and small requests
are still answered promptly."""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from typing import Any

from steward_harness.predictors import Predictor
from tests.support.models import Trained, records

NAME = "breast-cancer"
# Rows in the large request: several seconds of validation and scoring, all of it within the raised caps.
LARGE_ROWS = 400_000


def _timed(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, float]:
    """Status and seconds of one request on a connection of its own."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    try:
        connection.request(method, path, body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        connection.close()


def test_probes_and_small_requests_stay_fast_while_a_large_request_is_scored(
    trained: dict[str, Trained],
) -> None:
    rows = [list(record.values()) for record in records(trained[NAME].x_test)]
    large = json.dumps({"instances": [rows[i % len(rows)] for i in range(LARGE_ROWS)]}).encode()
    small = json.dumps({"instances": rows[:1]}).encode()
    caps = [f"--max_body_bytes={2 * len(large)}", f"--max_rows={LARGE_ROWS}"]
    with Predictor(str(trained[NAME].path), name=NAME, args=caps) as predictor:
        assert predictor.ready()[0], predictor.tail()
        port = predictor.port
        answered: dict[str, Any] = {}

        def send_large() -> None:
            try:
                answered["status"], answered["seconds"] = _timed(port, "POST", f"/v1/models/{NAME}:predict", large)
            except OSError as error:
                answered["status"], answered["seconds"] = repr(error), 0.0

        sender = threading.Thread(target=send_large)
        sender.start()
        probes: list[float] = []
        smalls: list[float] = []
        while sender.is_alive():
            for path in ("/v2/health/live", f"/v2/models/{NAME}/ready", f"/v1/models/{NAME}"):
                status, seconds = _timed(port, "GET", path)
                assert status == 200
                probes.append(seconds)
            status, seconds = _timed(port, "POST", f"/v1/models/{NAME}:predict", small)
            assert status == 200
            smalls.append(seconds)
            time.sleep(0.05)
        sender.join()

    assert answered["status"] == 200
    took = answered["seconds"]
    print(f"\nlarge request {took:.2f} s; slowest probe {max(probes):.3f} s, slowest small request {max(smalls):.3f} s")
    # Before scoring left the event loop, a probe sent during a large request waited for all of it. What still holds
    # the loop is KServe parsing the body, which the body cap bounds.
    assert max(probes) < 0.5 * took
    assert max(smalls) < 0.5 * took
    assert statistics.median(probes) < 0.1
    assert len(probes) >= 9, "too few probes were sent while the large request ran"
