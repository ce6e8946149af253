"""steward-bundle build | inspect | verify, as a training repository's CI would run them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import joblib
import pytest
import skops.io

from steward_predictor.cli import bundle as main
from tests.support import models


@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> models.Trained:
    return models.breast_cancer(tmp_path_factory.mktemp("bc"))


def _data(trained: models.Trained, directory: Path, suffix: str) -> tuple[Path, Path]:
    # Both files in one format: CSV spells a missing text value NaN and Parquet None, and a pipeline
    # trained on one spelling rightly fails parity on the other.
    train, holdout = directory / f"train{suffix}", directory / f"holdout{suffix}"
    for frame, target, path in ((trained.x_train, trained.y_train, train), (trained.x_test, trained.y_test, holdout)):
        labelled = frame.assign(label=target)
        if suffix == ".csv":
            labelled.to_csv(path, index=False)
        else:
            labelled.to_parquet(path)
    return train, holdout


def test_build_seals_a_skops_pipeline_and_prints_its_digest(
    breast_cancer: models.Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = tmp_path / "model.skops"
    skops.io.dump(breast_cancer.pipeline, pipeline)
    train, holdout = _data(breast_cancer, tmp_path, ".csv")
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"policy": {"unseenCategory": "reject"}}))
    code = main(
        [
            "build",
            str(tmp_path / "bundle"),
            f"--pipeline={pipeline}",
            f"--train={train}",
            f"--holdout={holdout}",
            "--target=label",
            "--version=2024-06-01",
            f"--schema-overrides={overrides}",
        ]
    )
    assert code == 0
    digest = capsys.readouterr().out.strip()
    assert digest.startswith("sha256:")
    assert main(["verify", str(tmp_path / "bundle"), f"--digest={digest}"]) == 0
    assert "golden examples reproduce" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "bundle"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["digest"] == digest
    assert summary["metadata"]["modelVersion"] == "2024-06-01"
    assert summary["holdout"]["source"] == "holdout"
    assert summary["schema"]["policy"]["unseenCategory"] == "reject"


def test_inspect_describes_the_bundle_without_loading_its_pipeline(
    breast_cancer: models.Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pickled = tmp_path / "pickled"
    breast_cancer.bundle.save(pickled, allow_pickle=True)
    assert main(["inspect", str(pickled)]) == 0
    text = capsys.readouterr().out
    assert "version     v1 (feature set 1), classification" in text
    assert "size_band" in text
    assert "may be missing" in text
    assert main(["inspect", str(pickled), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metadata"]["modelVersion"] == "v1"
    assert summary["schema"]["policy"]["outOfRange"] == "count"


def test_verify_fails_on_a_tampered_bundle_or_a_wrong_digest(
    breast_cancer: models.Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(breast_cancer.path)]) == 0
    assert main(["verify", str(breast_cancer.path), "--digest=sha256:" + "1" * 64]) == 1
    assert "was expected" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(breast_cancer.path, copy)
    (copy / "schema.json").write_text("{}")
    assert main(["verify", str(copy)]) == 1
    assert "schema.json does not match its digest" in capsys.readouterr().err


def test_build_refuses_a_pickle_unless_told_and_names_missing_columns(
    breast_cancer: models.Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = tmp_path / "model.joblib"
    joblib.dump(breast_cancer.pipeline, pipeline)
    train, _ = _data(breast_cancer, tmp_path, ".parquet")
    common = [f"--pipeline={pipeline}", f"--train={train}", "--version=v2"]
    assert main(["build", str(tmp_path / "a"), *common, "--target=label"]) == 2
    assert "pass --allow-pickle" in capsys.readouterr().err
    assert main(["build", str(tmp_path / "b"), *common, "--target=diagnosis", "--allow-pickle"]) == 2
    assert "has no target column 'diagnosis'" in capsys.readouterr().err
    assert main(["build", str(tmp_path / "c"), *common, "--target=label", "--allow-pickle"]) == 0
    assert (tmp_path / "c" / "pipeline.joblib").exists()
