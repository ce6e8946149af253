"""Bundles an attacker would build: sealed properly, so only Steward's trust rules stand between them and a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from steward_predictor.bundles import build_bundle

# scikit-learn's private test helpers re-export subprocess.check_output under this name.
REEXPORTED_SUBPROCESS = ("sklearn.utils._testing", "check_output")


def _stand_in(frame: Any) -> np.ndarray:
    return np.zeros((len(frame), 1))


def command_bundle(path: Path, marker: Path) -> Path:
    """A bundle whose feature code runs its golden rows' text as a command line, which creates `marker`.

    The pipeline is fitted with a harmless function that claims the re-exported subprocess helper's name, so
    skops records that name; loading it back resolves the real helper. Nothing runs while the bundle is built."""
    module, name = REEXPORTED_SUBPROCESS
    _stand_in.__module__, _stand_in.__name__, _stand_in.__qualname__ = module, name, name
    command = ["python3", "-c", f"open({str(marker)!r}, 'w').write('ran')"]
    x = pd.DataFrame({"amount": [0.0, 1.0, 2.0, 3.0], "note": [*command, "-"]})
    y = [0, 1, 0, 1]
    features = ColumnTransformer(
        [("amount", "passthrough", ["amount"]), ("note", FunctionTransformer(_stand_in), "note")]
    )
    pipeline = Pipeline([("features", features), ("model", LogisticRegression())]).fit(x, y)
    build_bundle(pipeline, x, y, model_version="evil").save(path)
    return path


def tampered_tree_bundle(path: Path, model: Any, tamper: str) -> Path:
    """A tree model's bundle whose node arrays were rewritten after fitting (and before sealing) so that predict
    would loop forever (`cycle`) or read out of bounds (`feature`, `child`). `model` is an unfitted
    DecisionTreeClassifier, RandomForestClassifier or HistGradientBoostingClassifier."""
    x = pd.DataFrame({"a": np.arange(200.0) % 7, "b": np.arange(200.0) % 5})
    y = (x["a"] + x["b"] > 5).astype(int).tolist()
    bundle = build_bundle(model.fit(x, y), x, y, model_version="tampered")
    if hasattr(model, "_predictors"):
        nodes = model._predictors[0][0].nodes
        internal = int(np.flatnonzero(nodes["is_leaf"] == 0)[-1])
        field = {"cycle": "left", "feature": "feature_idx", "child": "right"}[tamper]
        nodes[field][internal] = {"cycle": 0, "feature": 10**6, "child": 10**6}[tamper]
    else:
        tree = (model.estimators_[0] if hasattr(model, "estimators_") else model).tree_
        state = tree.__getstate__()
        nodes = state["nodes"].copy()
        internal = int(np.flatnonzero(nodes["left_child"] != -1)[-1])
        field = {"cycle": "left_child", "feature": "feature", "child": "right_child"}[tamper]
        nodes[field][internal] = {"cycle": 0, "feature": 10**6, "child": 10**6}[tamper]
        tree.__setstate__({**state, "nodes": nodes})
    bundle.save(path)
    return path
