"""`steward-predict batch --compare-with`: a batch challenger's run scores every chunk with the incumbent's bundle
too and compares the two versions' answers row by row, on real Parquet files and real bundles; the summary file
(a pod's termination message) carries the comparison, or what failed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from steward_operator.evidence import runs
from steward_predictor import cli, defaults
from tests.support import models
from tests.support.models import Trained


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    return models.contenders(tmp_path_factory.mktemp("models"), "v3")


def _rows(trained: Trained, directory: Path) -> Path:
    """The test rows, twice over, with row 2 holding a word where a number belongs (both versions reject it)."""
    frame = pd.concat([trained.x_test, trained.x_test]).reset_index(drop=True)
    frame["mean radius"] = [repr(float(value)) for value in frame["mean radius"]]
    frame.loc[2, "mean radius"] = "twelve"
    path = directory / "rows.parquet"
    frame.to_parquet(path)
    return path


def _compare(tmp_path: Path, challenger: Trained, incumbent: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    summary = tmp_path / "termination-log"
    code = cli.predict(
        [
            "batch",
            *("--bundle", str(challenger.path), "--compare-with", str(incumbent)),
            *("--input", str(_rows(challenger, tmp_path)), "--output", str(tmp_path / "scores.parquet")),
            *("--summary-file", str(summary), *extra),
        ]
    )
    return code, json.loads(summary.read_text())


def test_an_equal_challenger_agrees_on_almost_every_row(versions: dict[str, Trained], tmp_path: Path) -> None:
    code, summary = _compare(tmp_path, versions["v2"], versions["v1"].path)
    assert code == defaults.EXIT_OK
    comparison = summary["comparison"]
    rows = 2 * len(versions["v1"].x_test)
    incumbent, challenger = comparison["incumbent"], comparison["challenger"]
    assert (incumbent["version"], challenger["version"]) == ("v1", "v2")
    assert incumbent["digest"] == versions["v1"].bundle.digest
    assert (incumbent["rows"], incumbent["rejected"]) == (rows, 1)
    assert (challenger["rows"], challenger["rejected"]) == (rows, 1)
    assert comparison["pairs"] == rows - 1
    assert comparison["disagreements"] < 0.05 * comparison["pairs"]
    for side in (incumbent, challenger):
        assert sum(side["predictions"].values()) == rows - 1
        assert set(side["predictions"]) <= {"0", "1"}
        assert side["holdout"]["metrics"]["accuracy"] > 0.9
    assert incumbent["holdout"]["data"] == challenger["holdout"]["data"] != ""
    assert (summary["rowsRead"], summary["rowsRejected"]) == (rows, 1)


def test_a_challenger_trained_on_shuffled_outcomes_disagrees_often(
    versions: dict[str, Trained], tmp_path: Path
) -> None:
    code, summary = _compare(tmp_path, versions["v3"], versions["v1"].path)
    assert code == defaults.EXIT_OK
    comparison = summary["comparison"]
    assert comparison["disagreements"] > 0.25 * comparison["pairs"]
    assert comparison["challenger"]["holdout"]["metrics"]["accuracy"] < 0.8


def test_the_scores_written_are_the_challengers_alone(versions: dict[str, Trained], tmp_path: Path) -> None:
    _compare(tmp_path, versions["v2"], versions["v1"].path)
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    assert set(scores["model_version"]) == {"v2"}


def test_a_refused_incumbent_bundle_is_named_in_the_summary_file(versions: dict[str, Trained], tmp_path: Path) -> None:
    tampered = tmp_path / "incumbent"
    shutil.copytree(versions["v1"].path, tampered)
    with (tampered / "schema.json").open("a") as schema:
        schema.write(" ")
    code, summary = _compare(tmp_path, versions["v2"], tampered)
    assert code == defaults.EXIT_REFUSED
    assert summary["failed"] == "incumbent bundle refused"
    assert summary["exitCode"] == defaults.EXIT_REFUSED
    assert "schema.json does not match its digest" in summary["error"]
    assert not (tmp_path / "scores.parquet").exists()


def test_a_refused_challenger_bundle_is_named_in_the_summary_file(versions: dict[str, Trained], tmp_path: Path) -> None:
    pinned = "sha256:" + "0" * 64
    code, summary = _compare(tmp_path, versions["v2"], versions["v1"].path, "--digest", pinned)
    assert code == defaults.EXIT_REFUSED
    assert summary["failed"] == "challenger bundle refused" == runs.REFUSED  # what the operator rolls back on


def test_too_many_rejects_leave_the_comparison_in_the_summary_file(
    versions: dict[str, Trained], tmp_path: Path
) -> None:
    code, summary = _compare(tmp_path, versions["v2"], versions["v1"].path, "--max-reject-fraction", "0")
    assert code == defaults.EXIT_REJECTED
    assert summary["failed"] == "rejected"
    assert summary["comparison"]["challenger"]["rejected"] == 1
