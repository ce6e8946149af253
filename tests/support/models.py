"""Small real models trained on scikit-learn's bundled datasets, with numeric and categorical features and
missing values, sealed into bundles the way a training repository would."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from steward_predictor.bundles import Bundle, build_bundle


@dataclass(frozen=True)
class Trained:
    """A fitted pipeline, the data around it, and its saved bundle."""

    pipeline: Any
    x_train: pd.DataFrame
    y_train: pd.Series
    x_test: pd.DataFrame
    y_test: pd.Series
    bundle: Bundle
    path: Path


def as_sent(value: Any) -> Any:
    """A value as a client sends it in JSON: null for a missing one."""
    return None if isinstance(value, float) and math.isnan(value) else value


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a client sends them."""
    return [{str(key): as_sent(value) for key, value in row.items()} for row in frame.to_dict("records")]


def _with_category_and_gaps(x: pd.DataFrame, source: str, seed: int) -> pd.DataFrame:
    """Add a categorical feature derived from `source` and knock out ~5% of two columns."""
    x = x.copy()
    x["size_band"] = pd.qcut(x[source], 3, labels=["small", "medium", "large"]).astype(object)
    rng = np.random.default_rng(seed)
    x.loc[rng.random(len(x)) < 0.05, x.columns[1]] = np.nan
    x.loc[rng.random(len(x)) < 0.05, "size_band"] = np.nan
    return x


def _preprocessor(numeric: list[str]) -> ColumnTransformer:
    return ColumnTransformer(
        [
            ("numeric", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), numeric),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("encode", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                ["size_band"],
            ),
        ]
    )


def _split(x: pd.DataFrame, y: pd.Series, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * 0.75)
    train, test = order[:cut], order[cut:]
    return x.iloc[train], x.iloc[test], y.iloc[train], y.iloc[test]


def breast_cancer(directory: Path, version: str = "v1", c: float = 1.0, *, shuffled: bool = False) -> Trained:
    """Binary classifier: 10 numeric features plus a categorical one, with missing values; `shuffled` trains it on
    the outcomes of other rows, so it is right about as often as a coin (its test outcomes are shuffled too)."""
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    if shuffled:
        y = pd.Series(np.random.default_rng(1).permutation(y.to_numpy()), index=y.index, name=y.name)
    x = _with_category_and_gaps(x.iloc[:, :10], "mean radius", seed=1)
    pipeline = Pipeline(
        [("features", _preprocessor(list(x.columns[:10]))), ("model", LogisticRegression(C=c, max_iter=2000))]
    )
    return _train(pipeline, x, y, directory / "breast-cancer", version)


def contenders(directory: Path, *shuffled: str) -> dict[str, Trained]:
    """Breast cancer classifiers to release one after another: v1, v2 as good (less regularised), and under each
    name in `shuffled` one trained on shuffled outcomes, as fast and as error-free but answering otherwise."""
    found = {"v1": breast_cancer(directory, "v1"), "v2": breast_cancer(directory, "v2", c=0.5)}
    return found | {name: breast_cancer(directory, name, shuffled=True) for name in shuffled}


def wine(directory: Path, version: str = "v1") -> Trained:
    """Three-class classifier with string labels."""
    x, y = load_wine(return_X_y=True, as_frame=True)
    x = _with_category_and_gaps(x, "alcohol", seed=2)
    y = y.map({0: "barolo", 1: "grignolino", 2: "barbera"})
    pipeline = Pipeline(
        [("features", _preprocessor(list(x.columns[:13]))), ("model", LogisticRegression(max_iter=2000))]
    )
    return _train(pipeline, x, y, directory / "wine", version)


def diabetes(directory: Path, version: str = "v1") -> Trained:
    """Regressor: gradient boosting over 10 numeric features plus a categorical one."""
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    x = _with_category_and_gaps(x, "bmi", seed=3)
    pipeline = Pipeline(
        [
            ("features", _preprocessor(list(x.columns[:10]))),
            ("model", HistGradientBoostingRegressor(max_iter=50, random_state=0)),
        ]
    )
    return _train(pipeline, x, y, directory / "diabetes", version)


def _train(pipeline: Any, x: pd.DataFrame, y: pd.Series, directory: Path, version: str) -> Trained:
    x_train, x_test, y_train, y_test = _split(x, y, seed=7)
    pipeline.fit(x_train, y_train)
    bundle = build_bundle(pipeline, x_train, y_train, holdout=(x_test, y_test), model_version=version)
    path = directory / version
    return Trained(pipeline, x_train, y_train, x_test, y_test, bundle.save(path), path)
