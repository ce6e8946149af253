"""A predictor refuses to become ready on a bundle it cannot trust or whose golden examples no longer
reproduce, and says why on its readiness endpoints and in its log."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from steward_harness.predictors import Predictor
from steward_predictor.bundles import _write_manifest, build_bundle
from tests.support.models import Trained

FEATURES_MODULE = "steward_test_features"
# The team's feature code as it was at training time, and as a later refactor left it in the serving image:
# missing values once became the column's typical value, now they become zero.
TRAINING_FEATURES = """
import numpy as np
def fill_missing(x):
    x = np.array(x, dtype=float)
    return np.where(np.isnan(x), 14.0, x)
"""
SERVING_FEATURES = TRAINING_FEATURES.replace("14.0", "0.0")


def _not_ready_reason(predictor: Predictor) -> str:
    ready, body = predictor.ready()
    assert not ready, "the model became ready"
    v1_status, v1_body = predictor.get(f"/v1/models/{predictor.name}")
    assert v1_status == 503
    assert json.loads(v1_body)["error"] == json.loads(body)["error"]
    return str(json.loads(body)["error"])


def _copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def test_a_bundle_changed_after_sealing_is_refused(trained: dict[str, Trained], tmp_path: Path) -> None:
    bundle = _copy(trained["wine"].path, tmp_path)
    holdout = json.loads((bundle / "holdout.json").read_text())
    holdout["accuracy"] = 1.0
    (bundle / "holdout.json").write_text(json.dumps(holdout))
    with Predictor(str(bundle), name="wine") as predictor:
        reason = _not_ready_reason(predictor)
        assert "was changed after it was sealed: holdout.json does not match its digest" in reason
        assert reason.split("ready. ", 1)[1] in predictor.log.read_text()
        status, _, body = predictor.post("/v1/models/wine:predict", {"instances": [[1.0] * 14]})
        assert status == 503
        assert "changed after it was sealed" in body


def test_a_pinned_digest_or_version_that_differs_is_refused(trained: dict[str, Trained]) -> None:
    path = str(trained["wine"].path)
    other = "sha256:" + "0" * 64
    with Predictor(path, name="wine", env={"STEWARD_BUNDLE_DIGEST": other}) as predictor:
        assert f"but {other} was expected" in _not_ready_reason(predictor)
    with Predictor(path, name="wine", args=["--model_version=v2"]) as predictor:
        assert "the bundle holds model version v1, not v2" in _not_ready_reason(predictor)
    digest = trained["wine"].bundle.digest
    assert digest
    with Predictor(
        path, name="wine", env={"STEWARD_BUNDLE_DIGEST": digest, "STEWARD_MODEL_VERSION": "v1"}
    ) as predictor:
        assert predictor.ready()[0], predictor.tail()


@pytest.fixture
def features_module(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """The feature module as trained (importable here) and as the serving image has it (for the server)."""
    training, serving = tmp_path / "training", tmp_path / "serving"
    for directory, source in ((training, TRAINING_FEATURES), (serving, SERVING_FEATURES)):
        directory.mkdir()
        (directory / f"{FEATURES_MODULE}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(training))
    try:
        yield training, serving
    finally:
        sys.path.remove(str(training))
        sys.modules.pop(FEATURES_MODULE, None)


def test_feature_code_that_changed_since_training_keeps_the_server_not_ready(
    trained: dict[str, Trained], features_module: tuple[Path, Path], tmp_path: Path
) -> None:
    training, serving = features_module
    features = importlib.import_module(FEATURES_MODULE)
    model = trained["breast-cancer"]
    pipeline = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("numeric", FunctionTransformer(features.fill_missing), list(model.x_train.columns[:10])),
                        ("categorical", OneHotEncoder(handle_unknown="ignore"), ["size_band"]),
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=5000)),
        ]
    ).fit(model.x_train.fillna({"size_band": "medium"}), model.y_train)
    x_train = model.x_train.fillna({"size_band": "medium"})
    bundle = build_bundle(
        pipeline,
        x_train,
        model.y_train,
        holdout=(model.x_test.fillna({"size_band": "medium"}), model.y_test),
        model_version="v9",
    )
    path = tmp_path / "v9"
    bundle.save(path)
    trust = f"--trust_type={FEATURES_MODULE}.fill_missing"

    # Untrusted code in a pipeline is refused before it can run.
    with Predictor(str(path), name="skewed", env={"PYTHONPATH": str(training)}) as predictor:
        reason = _not_ready_reason(predictor)
        assert f"the pipeline contains types that are not trusted: {FEATURES_MODULE}.fill_missing" in reason

    # Trusted, with the feature code it was trained with: ready.
    with Predictor(str(path), name="skewed", args=[trust], env={"PYTHONPATH": str(training)}) as predictor:
        assert predictor.ready()[0], predictor.tail()

    # Trusted, but the serving image's feature code fills missing values differently: not ready, and says why.
    with Predictor(str(path), name="skewed", args=[trust], env={"PYTHONPATH": str(serving)}) as predictor:
        reason = _not_ready_reason(predictor)
        assert "training/serving skew: golden examples no longer reproduce" in reason
        assert "training/serving skew" in predictor.log.read_text()


def test_a_pickled_pipeline_needs_an_explicit_opt_in(trained: dict[str, Trained], tmp_path: Path) -> None:
    path = tmp_path / "pickled"
    trained["diabetes"].bundle.save(path, allow_pickle=True)
    with Predictor(str(path), name="diabetes") as predictor:
        assert "which can run any code when loaded" in _not_ready_reason(predictor)
    with Predictor(str(path), name="diabetes", env={"STEWARD_ALLOW_PICKLE": "true"}) as predictor:
        assert predictor.ready()[0], predictor.tail()


def _golden(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def tamper(bundle: Path) -> None:
        golden = json.loads((bundle / "golden.json").read_text())
        change(golden)
        (bundle / "golden.json").write_text(json.dumps(golden))

    return tamper


def _corrupt_pipeline(bundle: Path) -> None:
    (bundle / "pipeline.skops").write_bytes(b"not a skops file at all")


def _no_golden_examples(golden: dict[str, Any]) -> None:
    golden.update(inputs=[], predictions=[], probabilities=[])


def _fewer_predictions(golden: dict[str, Any]) -> None:
    golden["predictions"].pop()


def _wider_probabilities(golden: dict[str, Any]) -> None:
    golden["probabilities"] = [[*row, 0.0] for row in golden["probabilities"]]


def _ragged_probabilities(golden: dict[str, Any]) -> None:
    golden["probabilities"][3] = golden["probabilities"][3][:1]


def _inputs_not_records(golden: dict[str, Any]) -> None:
    golden["inputs"] = "none"


# Each defect, and what the reason must say. The manifest is sealed again after tampering, so the digest check
# passes and the defect itself is what the predictor meets.
DEFECTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "a corrupt pipeline.skops": (_corrupt_pipeline, "File is not a zip file"),
    "no golden examples": (_golden(_no_golden_examples), "the bundle holds no golden examples"),
    "fewer golden predictions than inputs": (_golden(_fewer_predictions), "32 golden inputs but 31 predictions"),
    "golden probabilities wider than the classes": (
        _golden(_wider_probabilities),
        "golden probabilities have 3 columns where the model has 2 classes",
    ),
    "ragged golden probabilities": (
        _golden(_ragged_probabilities),
        "golden probabilities have 1 or 2 columns where the model has 2 classes",
    ),
    "golden inputs that are not records": (_golden(_inputs_not_records), "validation error for Golden"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_a_defective_bundle_keeps_the_server_up_and_not_ready_saying_why(
    trained: dict[str, Trained], tmp_path: Path, defect: str
) -> None:
    tamper, says = DEFECTS[defect]
    bundle = _copy(trained["breast-cancer"].path, tmp_path)
    tamper(bundle)
    _write_manifest(bundle)
    with Predictor(str(bundle), name="breast-cancer") as predictor:
        reason = _not_ready_reason(predictor)
        assert says in reason, reason
        assert predictor.get("/v2/health/live")[0] == 200
        status, _, body = predictor.post("/v1/models/breast-cancer:predict", {"instances": [[1.0] * 11]})
        assert status == 503, body
