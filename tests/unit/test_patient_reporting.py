"""A batch run reports its rows to the monitor patiently: when the queue is full it waits for room rather than drop
the oldest rows, as serving does; and it says what became of each row. Against a slow stand-in for the monitor's
POST /v1/predictions on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from steward_predictor.batch_log import BatchLog
from steward_predictor.chunks import ScoredChunk
from steward_predictor.prediction_log import BATCH, Reporter

EVENTS = 5 * BATCH


class SlowMonitor(BaseHTTPRequestHandler):
    taken: ClassVar[list[dict[str, Any]]] = []
    """Every event taken, in order."""

    def do_POST(self) -> None:
        events = json.loads(self.rfile.read(int(self.headers["content-length"])))
        time.sleep(0.05)
        self.taken.extend(events)
        body = json.dumps({"stored": len(events), "refused": 0, "refusals": []}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def monitor() -> Iterator[str]:
    SlowMonitor.taken.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowMonitor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _flood(reporter: Reporter) -> None:
    for start in range(0, EVENTS, BATCH):
        ids = [f"run-{row}" for row in range(start, start + BATCH)]
        reporter.report("v1", "incumbent", "run", np.zeros(BATCH), None, ids=ids)


def test_a_patient_reporter_waits_for_room_and_loses_nothing(monitor: str) -> None:
    reporter = Reporter(monitor, model="m", namespace="ns", capacity=BATCH, patience=30, registry=CollectorRegistry())
    _flood(reporter)
    reporter.close(timeout=30)
    assert reporter.counted == {"sent": EVENTS}
    assert (len(SlowMonitor.taken), reporter.unsent) == (EVENTS, 0)


def test_patience_is_spent_once_on_a_monitor_that_takes_nothing() -> None:
    """A monitor that is away costs a run one wait, not one a chunk: then the oldest rows go, and are counted."""
    away = Reporter(
        "http://127.0.0.1:9", model="m", namespace="ns", capacity=BATCH, patience=0.2, registry=CollectorRegistry()
    )
    away._post = lambda batch: None  # type: ignore[method-assign]
    _flood(away)
    assert not away.patient
    away.close(timeout=1)
    assert away.counted["dropped"] + away.unsent == EVENTS
    assert away.counted["dropped"] >= EVENTS - BATCH


def test_an_impatient_reporter_drops_the_oldest_when_the_queue_is_full(monitor: str) -> None:
    reporter = Reporter(monitor, model="m", namespace="ns", capacity=BATCH, registry=CollectorRegistry())
    _flood(reporter)
    reporter.close(timeout=30)
    assert reporter.counted["dropped"] > 0
    assert reporter.counted["sent"] + reporter.counted["dropped"] == EVENTS


def test_a_chunk_is_reported_under_its_request_ids_with_the_positive_class_probability(monitor: str) -> None:
    reporter = Reporter(monitor, model="m", namespace="ns", registry=CollectorRegistry())
    scores = pa.table(
        {
            "row": [0, 2],
            "request_id": ["run-0", "run-2"],
            "prediction": ["yes", "no"],
            "probability_no": [0.1, 0.8],
            "probability_yes": [0.9, 0.2],
        }
    )
    chunk = ScoredChunk(scores=scores, rejects=pa.table({"row": [1]}), rows=3, counted=Counter())
    scorer = SimpleNamespace(classes=["no", "yes"], bundle=SimpleNamespace(version="v7"))
    log = BatchLog(reporter, wait=5)
    log.add(chunk, scorer, "shadow")  # type: ignore[arg-type]  # a scorer as far as reporting reads one
    assert log.close() == {"sent": 2, "refused": 0, "dropped": 0, "unsent": 0}
    found = [(event["requestId"], event["prediction"], event["score"], event["variant"]) for event in SlowMonitor.taken]
    assert found == [("run-0", "yes", 0.9, "shadow"), ("run-2", "no", 0.2, "shadow")]
    assert {(event["model"], event["namespace"], event["version"]) for event in SlowMonitor.taken} == {
        ("m", "ns", "v7")
    }
