"""One scoring path for every front end: a bundle is loaded and refused in the same words online and in batch, its
golden examples are judged on what serving answers, and every scored batch, a request's or a chunk's, is observed
the same way."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kserve.errors import InvalidInput
from prometheus_client import CollectorRegistry

from steward_predictor import bundles, cli, defaults, scoring
from steward_predictor.bundles import Bundle, BundleError
from steward_predictor.chunks import ChunkScorer
from steward_predictor.metrics import Families, ModelMetrics
from steward_predictor.model import StewardModel
from steward_predictor.observers import Metered
from steward_predictor.scoring import Observation, Scorer
from steward_predictor.settings import Settings
from tests.support import models
from tests.support.models import Trained

RUN_ID = "0123456789abcdef0123456789abcdef"
SERVED = Bundle.predict


@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return models.breast_cancer(tmp_path_factory.mktemp("models"))


class Recorder:
    """Keeps every observation."""

    def __init__(self) -> None:
        self.seen: list[Observation] = []

    def observe(self, observation: Observation) -> None:
        self.seen.append(observation)


def _answers_otherwise(self: Bundle, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """What a bundle whose serving path has drifted from its pipeline answers: the other class, every time."""
    predictions, probabilities = SERVED(self, frame)
    return 1 - predictions, probabilities


class AnswersOtherwise(Bundle):
    """A bundle whose own predict, the one serving calls, disagrees with its pipeline's predict."""

    predict = _answers_otherwise


def _sample(registry: CollectorRegistry, name: str) -> float:
    return sum(sample.value for family in registry.collect() for sample in family.samples if sample.name == name)


def _reseal(path: Path) -> None:
    files = bundles.file_digests(path)
    manifest = {"format": bundles.FORMAT, "files": files, "digest": bundles.manifest_digest(files)}
    (path / bundles.MANIFEST).write_text(json.dumps(manifest))


# The golden replay


def test_golden_examples_are_judged_on_what_serving_answers_not_on_the_pipeline(breast_cancer: Trained) -> None:
    bundle = breast_cancer.bundle
    drifted = AnswersOtherwise(**{name: getattr(bundle, name) for name in Bundle.__dataclass_fields__})
    # The pipeline itself still reproduces every golden example; serving does not.
    golden = pd.DataFrame.from_records(bundle.golden.inputs, columns=bundle.schema.names)
    assert bundle.pipeline.predict(golden).tolist() == bundle.golden.predictions
    assert scoring.replay(Scorer(bundle)) == []
    problems = scoring.replay(Scorer(drifted))
    assert len(problems) == len(bundle.golden.inputs)
    assert problems[0].startswith("golden example 0: prediction")


def test_loading_refuses_a_bundle_whose_serving_path_no_longer_reproduces(
    breast_cancer: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Bundle, "predict", _answers_otherwise)
    with pytest.raises(BundleError, match=r"training/serving skew: golden examples no longer reproduce \(golden"):
        scoring.load(str(breast_cancer.path))


def test_the_golden_replay_feeds_no_observer(breast_cancer: Trained) -> None:
    scorer = scoring.load(str(breast_cancer.path))
    assert scorer.observers == []


# One refusal, in the same words for every front end


def test_a_pinned_version_that_differs_is_refused(breast_cancer: Trained) -> None:
    with pytest.raises(BundleError, match="the bundle holds model version v1, not v2"):
        scoring.load(str(breast_cancer.path), version="v2")


def test_a_bundle_that_cannot_be_read_is_refused_as_a_bundle_error(breast_cancer: Trained, tmp_path: Path) -> None:
    path = tmp_path / "bundle"
    breast_cancer.bundle.save(path)
    (path / "golden.json").write_text(json.dumps({"inputs": "none", "predictions": []}))
    _reseal(path)
    with pytest.raises(BundleError, match=rf"the bundle at {path} cannot be loaded \(ValidationError: "):
        scoring.load(str(path))


def test_online_and_batch_refuse_a_skewed_bundle_in_the_same_words(
    breast_cancer: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(Bundle, "predict", _answers_otherwise)
    model = StewardModel("breast-cancer", Settings(bundle_uri=str(breast_cancer.path)), Families(CollectorRegistry()))
    assert not model.load()
    assert model.reason.startswith("training/serving skew: golden examples no longer reproduce")

    rows = tmp_path / "rows.csv"
    breast_cancer.x_test.to_csv(rows, index=False)
    argv = ["batch", "--bundle", str(breast_cancer.path), "--input", str(rows), "--output", str(tmp_path / "out.csv")]
    assert cli.predict(argv) == defaults.EXIT_REFUSED
    assert f"bundle refused: {model.reason}" in capsys.readouterr().err


# Every scored batch observed


def test_a_request_with_a_rejected_row_is_refused_whole_and_observed(breast_cancer: Trained) -> None:
    recorder = Recorder()
    scorer = Scorer(breast_cancer.bundle, [recorder])
    records = models.records(breast_cancer.x_test.iloc[:4])
    records[2]["mean radius"] = "twelve"
    scored = scorer.score(scorer.validator.check_records(records), request_id="r-1", all_or_none=True)
    assert scored.refused
    assert len(scored.predictions) == 0
    (seen,) = recorder.seen
    assert (seen.request_id, seen.version, seen.predictions) == ("r-1", "v1", None)
    assert list(seen.checked.rejected) == [2]


def test_a_chunk_scores_its_accepted_rows_and_is_observed(breast_cancer: Trained) -> None:
    recorder = Recorder()
    frame = breast_cancer.x_test.reset_index(drop=True).astype({"mean radius": object})
    frame.loc[2, "mean radius"] = "twelve"
    chunk = ChunkScorer(Scorer(breast_cancer.bundle, [recorder]), run_id=RUN_ID).score(frame)
    (seen,) = recorder.seen
    assert seen.request_id == RUN_ID
    assert seen.predictions is not None
    assert seen.predictions.tolist() == chunk.scores.column("prediction").to_pylist()
    assert list(seen.checked.rejected) == [2]
    assert seen.seconds > 0


def test_requests_and_chunks_feed_the_metrics_alike(breast_cancer: Trained) -> None:
    registry = CollectorRegistry()
    metrics = ModelMetrics(Families(registry), "breast-cancer", "v1", "incumbent")
    metrics.attach(breast_cancer.bundle)
    scorer = Scorer(breast_cancer.bundle, [Metered(metrics)])
    frame = breast_cancer.x_test.reset_index(drop=True)
    checked = scorer.validator.check_records(models.records(frame))
    scorer.score(checked, request_id="r-1", all_or_none=True)
    ChunkScorer(scorer, run_id=RUN_ID).score(frame)
    assert _sample(registry, "steward_predictor_rows_total") == 2 * len(frame)
    assert _sample(registry, "steward_predictor_request_duration_seconds_count") == 2


def test_the_online_model_scores_through_the_one_path(breast_cancer: Trained) -> None:
    model = StewardModel("breast-cancer", Settings(bundle_uri=str(breast_cancer.path)), Families(CollectorRegistry()))
    assert model.load()
    assert model.loaded is not None
    recorder = Recorder()
    model.loaded.scorer.observers.append(recorder)
    frame = breast_cancer.x_test.iloc[:3]
    answer: Any = asyncio.run(model.predict({"instances": models.records(frame)}, {"x-request-id": "r-7"}))
    assert answer["predictions"] == breast_cancer.pipeline.predict(frame).tolist()
    (seen,) = recorder.seen
    assert seen.request_id == "r-7"
    records = models.records(frame)
    records[0]["mean area"] = None
    with pytest.raises(InvalidInput, match="mean area"):
        asyncio.run(model.predict({"instances": records}))
    assert recorder.seen[-1].predictions is None
