"""`steward-predict batch` reporting to a real monitor: every scored row under its request id, and with `--shadow`, a
challenger's answers to the same rows under the same ids, so that outcomes posted for the run's output pair the two
versions. A shadow that cannot be loaded leaves the run's own scores alone; a monitor that is away costs the run
nothing but the rows it never took, which the summary counts."""

from __future__ import annotations

import json
import logging
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from steward_harness.monitors import Monitor
from steward_harness.servers import http_get
from steward_predictor import cli, defaults
from tests.support import models
from tests.support.models import Trained
from tests.support.monitoring import TOKEN

MODEL, NAMESPACE = "tumours", "oncology"


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    return models.contenders(tmp_path_factory.mktemp("models"), "v3")


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[Monitor]:
    with Monitor(f"sqlite:///{tmp_path / 'monitor.db'}") as started:
        yield started


def _run(tmp_path: Path, trained: Trained, monitor_url: str, token: str, *extra: str) -> tuple[int, dict[str, Any]]:
    rows = tmp_path / "rows.parquet"
    trained.x_test.to_parquet(rows)
    summary = tmp_path / "summary.json"
    code = cli.predict(
        [
            "batch",
            *("--bundle", str(trained.path), "--input", str(rows), "--output", str(tmp_path / "scores.parquet")),
            *("--monitor-url", monitor_url, "--monitor-token", token, "--model", MODEL, "--namespace", NAMESPACE),
            *("--summary-file", str(summary), "--chunk-rows", "100", *extra),
        ]
    )
    return code, json.loads(summary.read_text())


def _pairs(monitor: Monitor, incumbent: str, challenger: str) -> dict[str, Any]:
    query = urllib.parse.urlencode(
        {"model": MODEL, "namespace": NAMESPACE, "incumbent": incumbent, "challenger": challenger}
    )
    status, body = http_get(f"{monitor.url}/v1/pairs?{query}")
    assert status == 200, body
    found: dict[str, Any] = json.loads(body)
    return found


def _label(monitor: Monitor, tmp_path: Path, truth: pd.Series) -> None:
    """The outcome of every row of the run's output, posted under the row's request id, as a team would."""
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    outcomes = [
        {"model": MODEL, "namespace": NAMESPACE, "requestId": request_id, "label": int(truth.iloc[row])}
        for request_id, row in zip(scores["request_id"], scores["row"], strict=True)
    ]
    status, _, body = monitor.post("/v1/outcomes", {"outcomes": outcomes}, TOKEN)
    assert status == 200, body


def test_a_shadowed_run_pairs_both_versions_answers_under_the_outputs_request_ids(
    versions: dict[str, Trained], monitor: Monitor, tmp_path: Path
) -> None:
    incumbent, shadow = versions["v1"], versions["v3"]
    token = monitor.predictor_token(NAMESPACE, MODEL)
    code, summary = _run(tmp_path, incumbent, monitor.url, token, "--shadow", str(shadow.path))
    rows = len(incumbent.x_test)
    assert code == defaults.EXIT_OK, summary
    assert summary["shadow"] == {"version": "v3", "digest": shadow.bundle.digest, "rows": rows}
    assert summary["reported"] == {"sent": 2 * rows, "refused": 0, "dropped": 0, "unsent": 0}
    # Only the incumbent's scores are written.
    assert set(pd.read_parquet(tmp_path / "scores.parquet")["model_version"]) == {"v1"}
    unlabelled = _pairs(monitor, "v1", "v3")
    assert (unlabelled["pairs"], unlabelled["labelled"]) == (rows, 0)
    _label(monitor, tmp_path, incumbent.y_test)
    paired = _pairs(monitor, "v1", "v3")
    assert paired["labelled"] == rows
    # v3 was trained on shuffled outcomes: right about as often as a coin, where v1 is right nearly always.
    assert paired["incumbentAccuracy"] > 0.9
    assert paired["challengerAccuracy"] < 0.7
    assert paired["onlyIncumbentRight"] > 5 * paired["onlyChallengerRight"]


def test_a_shadow_that_cannot_be_loaded_is_left_out_and_the_run_goes_on(
    versions: dict[str, Trained], monitor: Monitor, tmp_path: Path
) -> None:
    token = monitor.predictor_token(NAMESPACE, MODEL)
    pinned = "sha256:" + "0" * 64
    shadow = ("--shadow", str(versions["v2"].path), "--shadow-digest", pinned)
    code, summary = _run(tmp_path, versions["v1"], monitor.url, token, *shadow)
    rows = len(versions["v1"].x_test)
    assert code == defaults.EXIT_OK, summary
    assert pinned in summary["shadow"]["refused"]
    assert summary["reported"]["sent"] == rows
    assert summary["published"]
    assert _pairs(monitor, "v1", "v2")["pairs"] == 0


def test_a_monitor_that_is_away_costs_the_run_only_the_rows_it_never_took(
    versions: dict[str, Trained], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        away = f"http://127.0.0.1:{unused.getsockname()[1]}"
    with caplog.at_level(logging.WARNING, logger="steward.predictor"):
        code, summary = _run(tmp_path, versions["v1"], away, "some-token", "--monitor-wait", "1")
    assert f"the monitor at {away}/v1/predictions cannot be reached" in caplog.text
    rows = len(versions["v1"].x_test)
    assert code == defaults.EXIT_OK, summary
    assert summary["published"]
    assert summary["reported"]["sent"] == 0
    assert summary["reported"]["unsent"] + summary["reported"]["dropped"] == rows


def test_a_forged_token_is_refused_and_counted(versions: dict[str, Trained], monitor: Monitor, tmp_path: Path) -> None:
    forged = monitor.predictor_token(NAMESPACE, "another-model")
    code, summary = _run(tmp_path, versions["v1"], monitor.url, forged)
    assert code == defaults.EXIT_OK, summary
    assert summary["reported"]["refused"] == len(versions["v1"].x_test)
    assert summary["reported"]["sent"] == 0


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("--shadow", "x", "--compare-with", "y"), "not both"),
        (("--monitor-wait", "-1"), "--monitor-wait must be 0 to 86,400 seconds, not -1"),
        (("--monitor-wait", "inf"), "--monitor-wait must be 0 to 86,400 seconds, not inf"),
        (("--monitor-wait", "nan"), "--monitor-wait must be 0 to 86,400 seconds, not nan"),
    ],
    ids=["shadow-and-compare", "negative-wait", "endless-wait", "no-number"],
)
def test_contradictory_flags_are_usage_errors(
    versions: dict[str, Trained], tmp_path: Path, extra: tuple[str, ...], words: str
) -> None:
    code, summary = _run(tmp_path, versions["v1"], "http://127.0.0.1:9", "token", *extra)
    assert code == defaults.EXIT_USAGE
    assert words in summary["error"]


def test_a_shadow_needs_a_monitor(versions: dict[str, Trained], tmp_path: Path) -> None:
    rows = tmp_path / "rows.parquet"
    versions["v1"].x_test.to_parquet(rows)
    arguments = [
        "batch",
        "--bundle",
        str(versions["v1"].path),
        "--input",
        str(rows),
        "--output",
        str(tmp_path / "o.csv"),
    ]
    summary = tmp_path / "summary.json"
    code = cli.predict([*arguments, "--shadow", str(versions["v2"].path), "--summary-file", str(summary)])
    assert code == defaults.EXIT_USAGE
    assert "--shadow needs --monitor-url" in json.loads(summary.read_text())["error"]
