"""A batch run's summary as a termination message: at most what Kubernetes keeps, trimmed of what the operator does
not judge on before anything it does, and read back by the operator as the predictor wrote it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from steward_operator.evidence import runs
from steward_predictor import comparing


def _summary(bins: int = 2, location: str = "s3://scores/credit-limits/") -> dict[str, Any]:
    def side(version: str) -> dict[str, Any]:
        return {
            "version": version,
            "digest": f"sha256:{version * 32}",
            "rows": 100_000,
            "rejected": 12,
            "predictions": {f"class-{index}": 1 for index in range(bins)},
            "holdout": {"metrics": {"accuracy": 0.93, "logLoss": 0.2}, "data": "0123456789abcdef"},
        }

    return {
        "runId": "a" * 32,
        "rowsRead": 100_000,
        "input": location,
        "output": location,
        "rejects": location,
        "counted": {"unseenCategory": 4},
        "comparison": {"incumbent": side("v1"), "challenger": side("v2"), "pairs": 99_980, "disagreements": 312},
    }


def test_a_summary_that_fits_is_kept_whole() -> None:
    summary = _summary()
    assert json.loads(comparing.message(summary)) == summary


def test_long_locations_go_before_any_count() -> None:
    message = comparing.message(_summary(location="s3://" + "x" * 1_500))
    found = json.loads(message)
    assert len(message.encode()) <= comparing.MESSAGE_BYTES
    assert "input" not in found
    assert "counted" not in found
    assert found["comparison"]["challenger"]["predictions"] == {"class-0": 1, "class-1": 1}


def test_a_classifier_of_many_classes_keeps_its_counts_but_not_its_bins() -> None:
    message = comparing.message(_summary(bins=500))
    found = json.loads(message)
    assert len(message.encode()) <= comparing.MESSAGE_BYTES
    assert found["comparison"]["challenger"]["predictions"] == {}
    assert (found["comparison"]["pairs"], found["comparison"]["disagreements"]) == (99_980, 312)


def test_the_operator_reads_the_message_as_the_predictor_wrote_it() -> None:
    finished = datetime(2026, 12, 4, tzinfo=UTC)
    run = runs.parse("credit-limits--v2-1", finished, comparing.message(_summary()))
    assert run.challenger is not None
    assert (run.pairs, run.disagreements, run.challenger.rejected) == (99_980, 312, 12)
    assert run.challenger.held_out.metrics == {"accuracy": 0.93, "logLoss": 0.2}
    assert runs.MESSAGE_BYTES == comparing.MESSAGE_BYTES
