"""The monitor as it runs: a real steward-monitor process over a real SQLite file or PostgreSQL server, fed over HTTP.
Events sent again are not stored twice, outcomes upload in bulk, a monitor killed mid-stream loses nothing it
acknowledged, predictors report every prediction through a monitor outage, KServe's payload logger events are stored
once, and the predictor's reporter keeps the good events of a batch."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from steward_harness.monitors import Monitor
from steward_harness.predictors import Predictor
from steward_monitor.stores import PREDICTIONS
from steward_operator.evidence import MetricsUnavailableError, PairCounts
from steward_operator.evidence.monitor import Monitor as PairReader
from steward_predictor.prediction_log import Reporter
from tests.support import models
from tests.support.monitoring import (
    TOKEN,
    expected_answer,
    get_text,
    predictions,
    send_predictions,
    stored_counts,
    stored_rows,
)
from tests.support.waiting import wait_until


def test_an_event_sent_again_is_not_stored_twice(monitor: Monitor, store: str) -> None:
    assert send_predictions(monitor, {"predictions": predictions(100)}) == (200, expected_answer(100, 0))
    assert send_predictions(monitor, predictions(100)) == (200, expected_answer(0, 100))
    assert send_predictions(monitor, predictions(100, start=50)) == (200, expected_answer(50, 50))
    # The same event twice in one request is one event.
    twice = predictions(1, start=500) * 2
    assert send_predictions(monitor, twice) == (200, expected_answer(1, 1))
    assert stored_counts(store) == {"steward_predictions": 151, "steward_outcomes": 0}
    metrics = monitor.post("/metrics", b"")[0]
    assert metrics == 405  # /metrics is GET only
    exposition = get_text(f"{monitor.url}/metrics")
    assert 'steward_monitor_events_total{kind="prediction",result="stored"} 151.0' in exposition
    assert 'steward_monitor_events_total{kind="prediction",result="duplicate"} 151.0' in exposition
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_outcomes_upload_in_bulk(tmp_path: Path, form: str) -> None:
    frame = pd.DataFrame({"request_id": [f"request-{index}" for index in range(1_000)], "label": [0, 1] * 500})
    buffer = io.BytesIO()
    if form == "csv":
        frame.to_csv(buffer, index=False)
        kind = "text/csv"
    else:
        frame.to_parquet(buffer)
        kind = "application/vnd.apache.parquet"
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    with Monitor(store) as monitor:
        status, _, body = monitor.post(
            "/v1/outcomes?model=churn&namespace=ml", buffer.getvalue(), {**TOKEN, "content-type": kind}
        )
        assert (status, json.loads(body)) == (200, expected_answer(1_000, 0))
        unlabelled = pd.DataFrame({"request_id": ["a"]}).to_csv(index=False).encode()
        status, _, body = monitor.post("/v1/outcomes?model=churn", unlabelled, {**TOKEN, "content-type": "text/csv"})
        assert (status, json.loads(body)["error"]) == (400, "the upload has no column label; columns: request_id")
        nameless = frame.head(1).to_csv(index=False).encode()
        status, _, body = monitor.post("/v1/outcomes", nameless, {**TOKEN, "content-type": "text/csv"})
        assert (status, json.loads(body)["error"]) == (400, "row 1.model: required")
    assert stored_counts(store)["steward_outcomes"] == 1_000


def test_a_monitor_killed_mid_stream_loses_nothing_it_acknowledged(monitor: Monitor, store: str) -> None:
    """Eight senders post batches while the monitor is killed with SIGKILL and restarted; each resends what got no
    answer. Every acknowledged event is kept, and nothing is stored twice."""
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    run = uuid.uuid4().hex[:6]

    def send(sender: int) -> None:
        batch = 0
        while not stop.is_set():
            model = f"model-{run}-{sender}"
            events = predictions(50, start=batch * 50, model=model)
            while True:
                try:
                    status = monitor.post("/v1/predictions", events, monitor.authorization("ml", model))[0]
                except OSError:
                    status = 0  # Down, or cut off mid-answer.
                if status == 200:
                    break
                stop.wait(0.05)  # Send the same batch again.
            with lock:
                acknowledged.update(f"{event['model']}/{event['requestId']}" for event in events)
            batch += 1

    senders = [threading.Thread(target=send, args=(index,)) for index in range(8)]
    for thread in senders:
        thread.start()
    try:
        while len(acknowledged) < 2_000:
            stop.wait(0.05)
        monitor.kill()
        with lock:
            before = set(acknowledged)
        monitor.start()
        while len(acknowledged) < len(before) + 2_000:
            stop.wait(0.05)
    finally:
        stop.set()
        for thread in senders:
            thread.join(timeout=60)
    kept = [
        f"{model}/{request}" for model, request in stored_rows(store, PREDICTIONS.c.model, PREDICTIONS.c.request_id)
    ]
    assert len(kept) == len(set(kept))
    assert before <= set(kept), f"{len(before - set(kept))} acknowledged events were lost"
    assert acknowledged <= set(kept)


def test_predictors_report_every_prediction_through_a_monitor_outage(tmp_path: Path) -> None:
    """Two versions' predictors answer the same requests (as a gateway and its mirror would send them, with one
    request id); each reports its answers to the monitor, which therefore holds them in pairs. While the monitor
    is down the predictors answer as fast as ever, and what they could not report arrives once it is back."""
    began_at = datetime.now(UTC) - timedelta(minutes=1)
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    trained = {version: models.breast_cancer(tmp_path, version) for version in ("v1", "v2")}
    rows = models.records(trained["v1"].x_test)
    with Monitor(store) as monitor:
        environment = {
            "STEWARD_MONITOR_URL": monitor.url,
            "STEWARD_NAMESPACE": "clinic",
            "STEWARD_MONITOR_TOKEN": monitor.predictor_token("clinic", "diagnosis"),
        }
        predictors = {
            version: Predictor(str(model.path), name="diagnosis", env=environment).start()
            for version, model in trained.items()
        }
        try:
            for index in range(50):
                for predictor in predictors.values():
                    status, _, _ = predictor.post(
                        "/v1/models/diagnosis:predict", {"instances": [rows[index]]}, {"x-request-id": f"r{index}"}
                    )
                    assert status == 200
            monitor.kill()
            for index in range(50, 80):
                began = time.monotonic()
                status, _, _ = predictors["v1"].post(
                    "/v1/models/diagnosis:predict", {"instances": [rows[index]]}, {"x-request-id": f"r{index}"}
                )
                assert status == 200
                assert time.monotonic() - began < 1.0  # Serving never waits for the monitor.
            status, _, _ = predictors["v1"].post(
                "/v1/models/diagnosis:predict", {"instances": rows[80:83]}, {"x-request-id": "several"}
            )
            assert status == 200
            monitor.start()
            reported = wait_until(lambda: _events(store) if len(_events(store)) == 50 + 30 + 3 + 50 else None, 60)
            sent = get_text(f"{predictors['v1'].url}/metrics")
            pairs = json.loads(
                get_text(f"{monitor.url}/v1/pairs?namespace=clinic&model=diagnosis&incumbent=v1&challenger=v2")
            )
            # As the operator reads them for the shadow stage's paired guardrails.
            source = PairReader(monitor.url)
            counted = asyncio.run(source.pairs("diagnosis", "v1", "v2", began_at, namespace="clinic"))
            with pytest.raises(MetricsUnavailableError, match="answered 400"):
                asyncio.run(source.pairs("", "v1", "v2", began_at, namespace="clinic"))
        finally:
            for predictor in predictors.values():
                predictor.stop()
    by_version: dict[str, set[str]] = {}
    for namespace, model, version, request_id in reported:
        assert (namespace, model) == ("clinic", "diagnosis")
        by_version.setdefault(version, set()).add(request_id)
    assert by_version["v2"] == {f"r{index}" for index in range(50)}
    assert by_version["v1"] == {f"r{index}" for index in range(80)} | {"several-0", "several-1", "several-2"}
    assert len(by_version["v1"] & by_version["v2"]) == 50  # The pairs a shadow comparison reads.
    assert 'steward_predictor_reported_events_total{result="sent"} 83.0' in sent
    # The two versions were trained alike: on every request they both answered, they agree exactly.
    assert (pairs["pairs"], pairs["agreement"], pairs["meanScoreDifference"]) == (50, 1.0, 0.0)
    assert counted == PairCounts(pairs=50, disagreements=0)


def _events(store: str) -> list[tuple[Any, ...]]:
    columns = PREDICTIONS.c
    return stored_rows(store, columns.namespace, columns.model, columns.version, columns.request_id)


def test_kserve_payload_logger_events_are_stored_once(tmp_path: Path) -> None:
    """What KServe's payload logger posts (binary-mode CloudEvents) when an InferenceService's logger.url points
    at a monitor started to take them: response events become predictions, request events are acknowledged and
    skipped."""
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "0f9e",
        "ce-source": "http://localhost:9081/",
        "ce-type": "org.kubeflow.serving.inference.response",
        "ce-inferenceservicename": "churn-v2",
        "ce-namespace": "ml",
    }
    response = {"predictions": ["yes"], "probabilities": [[0.25, 0.75]], "classes": ["no", "yes"]}
    url = "/v1/events?namespace=ml&model=churn&version=v2"
    with Monitor(store, args=["--accept-unauthenticated-events"]) as monitor:
        assert json.loads(monitor.post(url, response, headers)[2]) == expected_answer(1, 0)
        assert json.loads(monitor.post(url, response, headers)[2]) == expected_answer(0, 1)
        request = headers | {"ce-type": "org.kubeflow.serving.inference.request"}
        assert json.loads(monitor.post(url, {"instances": [{"age": 40}]}, request)[2])["ignored"]
        status, _, body = monitor.post(url, response, {"ce-id": "x"})
        assert (status, json.loads(body)["error"]) == (
            400,
            "not a CloudEvent: send ce-type and ce-id headers (binary content mode)",
        )
    assert _events(store) == [("ml", "churn", "v2", "0f9e")]


# --- the predictor's reporter -----------------------------------------------------------------------------------------


def test_the_reporter_keeps_the_good_events_of_a_batch_and_logs_the_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = f"sqlite:///{tmp_path / 'monitor.db'}"
    with Monitor(store) as monitor:
        registry = CollectorRegistry()
        reporter = Reporter(
            monitor.url, model="churn", namespace="ml", token=monitor.predictor_token("ml", "churn"), registry=registry
        )
        ids = [f"request-{index}" for index in range(499)]
        ids.insert(42, "x" * 300)  # An x-request-id a client made up.
        with caplog.at_level(logging.ERROR, logger="steward.predictor"):
            for request_id in ids:
                reporter.report("v1", "incumbent", request_id, np.array(["yes"]), None)
            reporter.close(timeout=30)
        impostor = Reporter(
            monitor.url,
            model="churn",
            namespace="ml",
            token=monitor.predictor_token("ml", "other"),
            registry=(elsewhere := CollectorRegistry()),
        )
        impostor.report("v1", "incumbent", "forged", np.array(["no"]), None)
        impostor.close(timeout=30)
    assert registry.get_sample_value("steward_predictor_reported_events_total", {"result": "sent"}) == 499
    assert registry.get_sample_value("steward_predictor_reported_events_total", {"result": "refused"}) == 1
    assert elsewhere.get_sample_value("steward_predictor_reported_events_total", {"result": "refused"}) == 1
    assert stored_counts(store)["steward_predictions"] == 499
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "the monitor refused 1 of 500 prediction events: 'xxxxx" in logged
    assert "predictions[42].requestId: expected text of 1 to 256 characters" in logged
