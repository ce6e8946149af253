"""Bundles: what they hold, how they are sealed, and what loading refuses."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from sklearn.base import clone
from sklearn.neighbors import KNeighborsClassifier

from steward_predictor.bundles import BundleError, build_bundle, fingerprint, load_bundle
from steward_predictor.scoring import Scorer, replay
from tests.support import models


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> models.Trained:
    return models.wine(tmp_path_factory.mktemp("wine"))


def test_a_bundle_holds_everything_serving_and_monitoring_need(wine: models.Trained) -> None:
    bundle = load_bundle(str(wine.path))
    assert sorted(path.name for path in wine.path.iterdir()) == [
        "baselines.json",
        "golden.json",
        "holdout.json",
        "manifest.json",
        "metadata.json",
        "pipeline.skops",
        "schema.json",
    ]
    assert bundle.digest == wine.bundle.digest
    assert bundle.metadata.task == "classification"
    assert bundle.metadata.classes == ["barbera", "barolo", "grignolino"]
    assert bundle.metadata.training_rows == len(wine.x_train)
    assert {"accuracy", "logLoss", "rocAuc", "perClass"} <= set(bundle.holdout)
    assert set(bundle.holdout["perClass"]) == {"barbera", "barolo", "grignolino"}
    assert bundle.schema.names == list(wine.x_train.columns)
    band = bundle.schema.feature("size_band")
    assert band.kind == "categorical"
    assert band.categories == ["large", "medium", "small"]
    assert band.nullable
    histogram = bundle.baselines.features[0]
    assert len(histogram.edges or []) == 9
    assert sum(histogram.fractions) == pytest.approx(1.0)
    assert set(bundle.baselines.predictions.categories or []) == {"barbera", "barolo", "grignolino"}
    # Golden examples include rows with missing values: imputation is where skew hides.
    assert any(value is None for row in bundle.golden.inputs for value in row.values())
    assert replay(Scorer(bundle)) == []


def test_regression_bundles_carry_regression_results(tmp_path: Path) -> None:
    diabetes = models.diabetes(tmp_path)
    assert {"mae", "rmse", "r2"} <= set(diabetes.bundle.holdout)
    assert diabetes.bundle.baselines.scores is None
    assert diabetes.bundle.baselines.predictions.kind == "numeric"


def test_the_digest_is_content_addressed(wine: models.Trained, tmp_path: Path) -> None:
    # The digest follows the bytes, wherever they are copied to.
    copy = tmp_path / "copy"
    shutil.copytree(wine.path, copy)
    assert load_bundle(f"file://{copy}").digest == wine.bundle.digest


def test_bundles_are_immutable(wine: models.Trained) -> None:
    with pytest.raises(BundleError, match="bundles are immutable"):
        wine.bundle.save(wine.path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda path: (path / "golden.json").write_text("{}"), "golden.json does not match its digest"),
        (lambda path: (path / "pipeline.skops").unlink(), "pipeline.skops is missing"),
        (lambda path: (path / "extra.py").write_text("import os"), "extra.py is not in the manifest"),
        (lambda path: (path / "manifest.json").unlink(), "has no manifest.json"),
    ],
)
def test_a_changed_bundle_is_refused_before_anything_is_deserialized(
    wine: models.Trained, tmp_path: Path, change: object, message: str
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(wine.path, copy)
    assert callable(change)
    change(copy)
    with pytest.raises(BundleError, match=message):
        load_bundle(str(copy))


def test_a_rewritten_manifest_changes_the_digest(wine: models.Trained, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(wine.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "holdout.json").write_text('{"accuracy": 1.0}')
    manifest["files"]["holdout.json"] = "sha256:" + hashlib.sha256(b'{"accuracy": 1.0}').hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest's own digest"):
        load_bundle(str(copy))
    assert wine.bundle.digest
    with pytest.raises(BundleError, match=r"was changed after it was sealed|was expected"):
        load_bundle(str(copy), expected_digest=wine.bundle.digest)


def test_pickle_is_opt_in(wine: models.Trained, tmp_path: Path) -> None:
    pickled = wine.bundle.save(tmp_path / "pickled", allow_pickle=True)
    with pytest.raises(BundleError, match="can run any code when loaded"):
        load_bundle(str(tmp_path / "pickled"))
    loaded = load_bundle(str(tmp_path / "pickled"), allow_pickle=True)
    assert loaded.digest == pickled.digest
    assert replay(Scorer(loaded)) == []


def test_an_unfitted_pipeline_is_refused(wine: models.Trained) -> None:
    with pytest.raises(BundleError, match="not fitted"):
        build_bundle(clone(wine.pipeline), wine.x_train, wine.y_train, model_version="v2")


def test_schema_overrides_change_policy_and_ranges(wine: models.Trained) -> None:
    bundle = build_bundle(
        wine.pipeline,
        wine.x_train,
        wine.y_train,
        model_version="v2",
        schema_overrides={"policy": {"outOfRange": "reject"}, "features": {"alcohol": {"minimum": 0, "maximum": 20}}},
    )
    assert bundle.schema.policy.out_of_range == "reject"
    assert bundle.schema.feature("alcohol").maximum == 20
    with pytest.raises(ValueError, match="the data does not have"):
        bundle.schema.with_overrides({"features": {"vintage": {"minimum": 1900}}})


def test_fingerprints_tell_training_sets_apart(wine: models.Trained) -> None:
    assert fingerprint(wine.x_train, wine.y_train) == fingerprint(wine.x_train.copy(), wine.y_train.copy())
    shuffled = wine.x_train.sample(frac=1.0, random_state=0)
    assert fingerprint(shuffled, wine.y_train.loc[shuffled.index]) != fingerprint(wine.x_train, wine.y_train)


@pytest.mark.parametrize("probability_argmax", [True, False])
def test_served_classes_are_what_the_pipeline_predicts(wine: models.Trained, probability_argmax: bool) -> None:
    pipeline = wine.pipeline
    if not probability_argmax:
        # Outside the known families, predict() is asked for itself rather than read off the probabilities.
        pipeline = clone(wine.pipeline).set_params(model=KNeighborsClassifier())
        pipeline.fit(wine.x_train, wine.y_train)
    bundle = build_bundle(pipeline, wine.x_train, wine.y_train, model_version="v3")
    predictions, probabilities = bundle.predict(wine.x_test)
    assert predictions.tolist() == pipeline.predict(wine.x_test).tolist()
    assert probabilities is not None
    assert probabilities.shape == (len(wine.x_test), 3)
