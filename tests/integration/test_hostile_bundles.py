"""A real predictor handed a bundle built to attack it: it stays up, not ready, says why, and runs none of it."""

from __future__ import annotations

import json
from pathlib import Path

from sklearn.ensemble import RandomForestClassifier

from steward_harness.predictors import Predictor
from tests.support import hostile


def _refusal(predictor: Predictor) -> str:
    ready, body = predictor.ready()
    assert not ready, "the model became ready"
    return str(json.loads(body)["error"])


def test_a_predictor_refuses_feature_code_that_runs_commands(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bundle = hostile.command_bundle(tmp_path / "evil", marker)

    with Predictor(str(bundle), name="evil") as predictor:
        reason = _refusal(predictor)

    assert "sklearn.utils._testing.check_output (a function)" in reason
    assert not marker.exists()


def test_a_predictor_refuses_a_forest_whose_trees_would_read_out_of_bounds(tmp_path: Path) -> None:
    bundle = hostile.tampered_tree_bundle(tmp_path / "forest", RandomForestClassifier(n_estimators=3), "feature")

    with Predictor(str(bundle), name="forest") as predictor:
        reason = _refusal(predictor)

    assert "the pipeline's trees are malformed" in reason
    assert "splits on a feature outside" in reason
