"""A batch run's summary as a termination message: at most what Kubernetes keeps, trimmed of what the operator does
not judge on before anything it does, and read back by the operator as the predictor wrote it."""

from __future__ import annotations

import json
import typing
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pyarrow as pa

from steward_operator.evidence import runs
from steward_predictor import baselines, comparing
from steward_predictor.baselines import Histogram
from steward_predictor.bundles import Bundle
from steward_predictor.chunks import PREDICTION, ROW, ScoredChunk


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


def test_a_summary_too_long_without_its_locations_keeps_its_counts_but_not_its_bins() -> None:
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


def test_classes_of_long_names_keep_their_bins_in_the_message() -> None:
    # Ten classes predicted most in training, and a twelfth never seen there, each named in 1,000 characters.
    names = [f"{index:02d}" + "x" * 998 for index in range(12)]
    trained = [name for index, name in enumerate(names[:11]) for _ in range(20 - index)]
    bins = baselines.categorical_histogram("prediction", trained)
    bundles = [_Bundle(version, bins) for version in ("v1", "v2")]
    comparison = comparing.Comparison(*typing.cast("list[Bundle]", bundles))
    answers = pa.array(names * 10)
    chunk = ScoredChunk(pa.table({ROW: list(range(120)), PREDICTION: answers}), pa.table({}), 120, Counter())
    comparison.add(chunk, chunk)
    message = comparing.message({"runId": "r1", "input": "s3://" + "x" * 3_000, "comparison": comparison.as_dict()})
    found = json.loads(message)
    assert len(message.encode()) <= comparing.MESSAGE_BYTES
    predictions = found["comparison"]["challenger"]["predictions"]
    assert len(predictions) == 11
    assert predictions["__other__"] == 20  # The 11th and 12th classes, outside the ten most predicted in training.
    assert all(len(label) <= comparing.LABEL_CHARS for label in predictions)
    assert sum(predictions.values()) == 120


@dataclass
class _Bundle:
    """What a comparison reads of a bundle."""

    version: str
    bins: Histogram
    digest: str = "sha256:ab"
    holdout: dict[str, Any] = field(default_factory=lambda: {"accuracy": 0.9, "fingerprint": "sha256:0123"})

    @property
    def metadata(self) -> Any:
        return SimpleNamespace(model_version=self.version)

    @property
    def baselines(self) -> Any:
        return SimpleNamespace(predictions=self.bins)
