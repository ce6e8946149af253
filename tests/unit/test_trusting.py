"""What a bundle's pipeline may hold: a bundle that would run code, or whose trees would crash predict, is refused
before any of it runs; scikit-learn's own models load as they were trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.tree import DecisionTreeClassifier

from steward_predictor import cli, defaults
from steward_predictor.bundles import SKOPS_FILE, BundleError, build_bundle, load_bundle, read_skops
from tests.support import hostile, models


def test_a_bundle_whose_feature_code_runs_commands_is_refused_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bundle = hostile.command_bundle(tmp_path / "evil", marker)

    with pytest.raises(BundleError) as refused:
        load_bundle(str(bundle))

    assert "sklearn.utils._testing.check_output (a function)" in str(refused.value)
    assert "--trust_type" in str(refused.value)
    assert not marker.exists()


def test_verify_refuses_it_too_and_names_the_function(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    bundle = hostile.command_bundle(tmp_path / "evil", marker)

    assert cli.bundle(["verify", str(bundle)]) == defaults.EXIT_FAILED

    assert "sklearn.utils._testing.check_output" in capsys.readouterr().err
    assert not marker.exists()


def test_a_function_is_trusted_only_when_named(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bundle = hostile.command_bundle(tmp_path / "evil", marker)

    # Named, it loads: the team has said it reviewed it (and this one is harmless until predict is called).
    loaded = load_bundle(str(bundle), trusted_types=("sklearn.utils._testing.check_output",))

    assert loaded.pipeline is not None
    assert not marker.exists()


@pytest.mark.parametrize(
    "model",
    [DecisionTreeClassifier(), RandomForestClassifier(n_estimators=3), HistGradientBoostingClassifier(max_iter=3)],
    ids=lambda model: type(model).__name__,
)
@pytest.mark.parametrize("tamper", ["cycle", "feature", "child"])
def test_trees_that_would_loop_or_read_out_of_bounds_are_refused(tmp_path: Path, model: Any, tamper: str) -> None:
    bundle = hostile.tampered_tree_bundle(tmp_path / "tampered", model, tamper)

    with pytest.raises(BundleError, match="the pipeline's trees are malformed"):
        load_bundle(str(bundle))


@pytest.mark.parametrize(
    "model",
    [
        DecisionTreeClassifier(random_state=0),
        RandomForestClassifier(n_estimators=20, random_state=0),
        GradientBoostingClassifier(n_estimators=20, random_state=0),
        HistGradientBoostingClassifier(max_iter=20, random_state=0),
    ],
    ids=lambda model: type(model).__name__,
)
def test_scikit_learn_tree_models_load_without_naming_anything(tmp_path: Path, model: Any) -> None:
    wine = models.wine(tmp_path)
    x_train = wine.x_train.drop(columns=["size_band"])
    fitted = model.fit(x_train.fillna(0), wine.y_train)
    bundle = build_bundle(fitted, x_train.fillna(0), wine.y_train, model_version="trees").save(tmp_path / "trees")

    loaded = load_bundle(str(tmp_path / "trees"))

    assert loaded.pipeline is not None
    assert (loaded.pipeline.predict(x_train.fillna(0)) == fitted.predict(x_train.fillna(0))).all()
    assert bundle.digest == loaded.digest


def test_types_skops_does_not_trust_stay_refused_until_named(tmp_path: Path) -> None:
    wine = models.wine(tmp_path)
    x_train = wine.x_train.drop(columns=["size_band"]).fillna(0)
    bundle = build_bundle(KNeighborsClassifier().fit(x_train, wine.y_train), x_train, wine.y_train, model_version="k")
    bundle.save(tmp_path / "knn")
    names = ("sklearn.metrics._dist_metrics.EuclideanDistance64", "sklearn.neighbors._kd_tree.KDTree")

    with pytest.raises(BundleError) as refused:
        read_skops(tmp_path / "knn" / SKOPS_FILE)
    assert all(name in str(refused.value) for name in names)

    assert read_skops(tmp_path / "knn" / SKOPS_FILE, names) is not None
