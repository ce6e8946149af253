"""Outcome uploads built to take the monitor down: a Parquet file of some 120 KB that decodes to 20 million rows, and
a CSV of 100,000 columns. A real monitor refuses each with the limit it broke, before decoding it, stays within the
chart's memory limit, and answers /healthz quickly all along; an upload as large as the limits allow is stored
while /healthz keeps answering."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steward_harness.monitors import Monitor
from steward_harness.servers import http_get

TOKEN = {"Authorization": "Bearer outcome-token"}
PARQUET = {**TOKEN, "content-type": "application/vnd.apache.parquet"}
CSV = {**TOKEN, "content-type": "text/csv"}
HEALTHY_WITHIN = 1.0
"""Seconds /healthz may take to answer while an upload is handled: the chart's probes give it 5."""
MEMORY_LIMIT = 1024**3
"""The chart's memory limit for the monitor."""


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[Monitor]:
    with Monitor(f"sqlite:///{tmp_path / 'monitor.db'}") as process:
        yield process


def _parquet_bomb(rows: int) -> bytes:
    """One dictionary-encoded row group: every row points at the same entry, so the file stays tiny."""
    indices = pa.array(np.zeros(rows, dtype=np.int32))
    table = pa.table(
        {
            "request_id": pa.DictionaryArray.from_arrays(indices, pa.array(["request"])),
            "label": pa.DictionaryArray.from_arrays(indices, pa.array(["yes"])),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=rows, compression="zstd")
    return buffer.getvalue()


def _wide_csv(columns: int, rows: int) -> bytes:
    header = ",".join(["request_id", "label", *(f"feature_{index}" for index in range(2, columns))])
    row = ",".join(["0"] * columns)
    return "\n".join([header, *([row] * rows)]).encode()


def _upload_while_probing(monitor: Monitor, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, float]:
    """Post `body` while /healthz is asked every 20 ms; the answer, and the longest /healthz took meanwhile (and
    once more after)."""
    answer: list[tuple[int, str]] = []

    def upload() -> None:
        try:
            status, _, text = monitor.post(path, body, headers)
        except OSError as error:  # No answer within the client's 30 s.
            status, text = 0, repr(error)
        answer.append((status, text))

    sender = threading.Thread(target=upload)
    sender.start()
    slowest = 0.0
    while True:
        done = not sender.is_alive()
        began = time.monotonic()
        status, _ = http_get(f"{monitor.url}/healthz", timeout=10)
        slowest = max(slowest, time.monotonic() - began if status == 200 else float("inf"))
        if done:
            break
        time.sleep(0.02)
    sender.join()
    return *answer[0], slowest


def _peak_memory(monitor: Monitor) -> int:
    """The monitor process's peak resident memory, in bytes."""
    status = Path(f"/proc/{monitor.pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def test_a_parquet_file_of_millions_of_rows_is_refused_from_its_metadata(monitor: Monitor) -> None:
    bomb = _parquet_bomb(20_000_000)
    assert len(bomb) < 200_000
    status, text, slowest = _upload_while_probing(monitor, "/v1/outcomes?model=churn", bomb, PARQUET)
    assert status == 413, text
    assert json.loads(text)["error"] == (
        "the upload has 20,000,000 rows; the monitor takes at most 100,000 a request: split it"
    )
    assert slowest < HEALTHY_WITHIN
    assert _peak_memory(monitor) < MEMORY_LIMIT


def test_a_csv_of_100_000_columns_is_refused_without_blocking(monitor: Monitor) -> None:
    wide = _wide_csv(100_000, 20)
    status, text, slowest = _upload_while_probing(monitor, "/v1/outcomes?model=churn", wide, CSV)
    assert status == 413, text
    assert json.loads(text)["error"] == "the upload has 100,000 columns; the monitor reads tables of at most 1,000"
    assert slowest < HEALTHY_WITHIN
    assert _peak_memory(monitor) < MEMORY_LIMIT


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_an_upload_as_large_as_allowed_is_stored_while_health_answers(monitor: Monitor, form: str) -> None:
    frame = pd.DataFrame(
        {"request_id": [f"request-{index}" for index in range(100_000)], "label": np.arange(100_000) % 2}
    )
    frame["notes"] = "kept out"  # A column the monitor does not read.
    if form == "csv":
        body, headers = frame.to_csv(index=False).encode(), CSV
    else:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, row_group_size=30_000)
        body, headers = buffer.getvalue(), PARQUET
    status, text, slowest = _upload_while_probing(monitor, "/v1/outcomes?model=churn&namespace=ml", body, headers)
    assert (status, json.loads(text)) == (200, {"stored": 100_000, "duplicates": 0, "refused": 0, "refusals": []})
    assert slowest < HEALTHY_WITHIN
    one_more = pd.concat([frame, frame.tail(1)])
    if form == "csv":
        body = one_more.to_csv(index=False).encode()
    else:
        buffer = io.BytesIO()
        one_more.to_parquet(buffer)
        body = buffer.getvalue()
    status, _, text = monitor.post("/v1/outcomes?model=churn&namespace=ml", body, headers)
    assert status == 413
    assert "the monitor takes at most 100,000 a request" in json.loads(text)["error"]
