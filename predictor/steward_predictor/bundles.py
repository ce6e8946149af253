"""Model bundles: one sealed, content-addressed directory per model version holding the fitted pipeline with
its feature code, the feature schema, training baselines, held-out results, golden examples and metadata."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import fsspec
import joblib
import numpy as np
import pandas as pd
import sklearn
import skops.io
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from sklearn import metrics
from sklearn.base import is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from steward_predictor import baselines as baselines_module
from steward_predictor import trusting
from steward_predictor.baselines import Baselines
from steward_predictor.defaults import DEFAULT_URI
from steward_predictor.schemas import FeatureSchema, infer_schema

FORMAT = "steward.dev/bundle-v1"
MANIFEST = "manifest.json"
SKOPS_FILE = "pipeline.skops"
PICKLE_FILE = "pipeline.joblib"
GOLDEN_ROWS = 32

Task = Literal["classification", "regression"]
# scikit-learn classifiers whose predict() is the class predict_proba() rates highest. Others (an SVC with
# Platt scaling, say) may disagree, and are asked for both.
ARGMAX_CLASSIFIERS = frozenset(
    {
        "LogisticRegression",
        "DecisionTreeClassifier",
        "RandomForestClassifier",
        "ExtraTreesClassifier",
        "HistGradientBoostingClassifier",
        "GradientBoostingClassifier",
        "GaussianNB",
        "MultinomialNB",
        "BernoulliNB",
        "MLPClassifier",
    }
)


class BundleError(Exception):
    """A bundle cannot be built, saved or loaded; the message says why and what to do."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)


class Metadata(_Model):
    model_version: str
    feature_set_version: str
    task: Task
    classes: list[Any] | None = None
    """Class labels, in the order of predict_proba's columns."""
    created_at: str
    python: str
    sklearn: str
    numpy: str
    pandas: str
    training_rows: int
    training_fingerprint: str
    """sha256 over the training features and target: which data this model learnt from."""


class Golden(_Model):
    """Inputs with the outputs they produced at training time; replayed at every start."""

    inputs: list[dict[str, Any]]
    predictions: list[Any]
    probabilities: list[list[float]] | None = None


@dataclass(frozen=True)
class Bundle:
    pipeline: Any
    schema: FeatureSchema
    baselines: Baselines
    holdout: dict[str, Any]
    golden: Golden
    metadata: Metadata
    digest: str | None = None
    """sha256 of the manifest, once saved or loaded."""

    @property
    def version(self) -> str:
        return self.metadata.model_version

    def predict(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and, for classifiers, class probabilities (columns in the order of metadata.classes),
        for rows already validated and typed. The feature steps run once for both."""
        pipeline = self.pipeline
        if isinstance(pipeline, Pipeline) and len(pipeline.steps) > 1:
            # Slicing makes a new Pipeline that shares the fitted steps: microseconds.
            transformed, estimator = pipeline[:-1].transform(frame), pipeline[-1]
        else:
            transformed, estimator = frame, pipeline
        if self.metadata.task == "regression":
            return np.asarray(estimator.predict(transformed)), None
        probabilities = np.asarray(estimator.predict_proba(transformed), dtype=np.float64)
        if type(estimator).__module__.startswith("sklearn.") and type(estimator).__name__ in ARGMAX_CLASSIFIERS:
            # predict() is defined as the most probable class here: skip scoring a second time.
            return np.asarray(estimator.classes_)[np.argmax(probabilities, axis=1)], probabilities
        return np.asarray(estimator.predict(transformed)), probabilities

    def save(self, path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Bundle:
        """Write the bundle as a new directory and return it with its digest. The directory appears whole or
        not at all. The pipeline goes through skops; plain pickle only with `allow_pickle`."""
        target = Path(path)
        if target.exists():
            raise BundleError(f"{target} already exists: bundles are immutable, write each version to a new path")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _write_pipeline(self.pipeline, staging, allow_pickle)
            for name, document in self._documents().items():
                (staging / name).write_text(json.dumps(document, indent=1, sort_keys=True, default=_json_default))
            digest = _write_manifest(staging)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return replace(self, digest=digest)

    def _documents(self) -> dict[str, Any]:
        return {
            "schema.json": self.schema.model_dump(mode="json", by_alias=True),
            "baselines.json": self.baselines.model_dump(mode="json", by_alias=True),
            "holdout.json": self.holdout,
            "golden.json": self.golden.model_dump(mode="json", by_alias=True),
            "metadata.json": self.metadata.model_dump(mode="json", by_alias=True),
        }


def build_bundle(
    pipeline: Any,
    x_train: pd.DataFrame,
    y_train: Any,
    *,
    model_version: str,
    holdout: tuple[pd.DataFrame, Any] | None = None,
    feature_set_version: str = "1",
    schema_overrides: dict[str, Any] | None = None,
    golden_rows: int = GOLDEN_ROWS,
) -> Bundle:
    """Seal a fitted scikit-learn pipeline with what serving and monitoring need to know about it."""
    if not isinstance(x_train, pd.DataFrame):
        raise BundleError("x_train must be a pandas DataFrame with named feature columns")
    try:
        check_is_fitted(pipeline)
    except NotFittedError as error:
        raise BundleError(f"the pipeline is not fitted: fit it on the training data first ({error})") from error
    if is_classifier(pipeline):
        task: Task = "classification"
    elif is_regressor(pipeline):
        task = "regression"
    else:
        raise BundleError(f"{type(pipeline).__name__} is neither a classifier nor a regressor")

    schema = infer_schema(x_train)
    if schema_overrides:
        schema = schema.with_overrides(schema_overrides)
    predictions = np.asarray(pipeline.predict(x_train))
    scores = None
    classes = None
    if task == "classification":
        classes = [plain(label) for label in pipeline.classes_]
        if len(classes) == 2:
            scores = np.asarray(pipeline.predict_proba(x_train))[:, 1]
    x_eval, y_eval = holdout if holdout is not None else (x_train, y_train)
    metadata = Metadata(
        model_version=model_version,
        feature_set_version=feature_set_version,
        task=task,
        classes=classes,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        python=platform.python_version(),
        sklearn=sklearn.__version__,
        numpy=np.__version__,
        pandas=pd.__version__,
        training_rows=len(x_train),
        training_fingerprint=fingerprint(x_train, y_train),
    )
    return Bundle(
        pipeline=pipeline,
        schema=schema,
        baselines=baselines_module.compute(x_train, schema, predictions, scores),
        holdout={
            "source": "holdout" if holdout is not None else "training",
            # Two bundles evaluated on the same rows can be compared exactly: the validation gate checks this.
            "fingerprint": fingerprint(x_eval, y_eval),
            **evaluate(pipeline, task, x_eval, y_eval),
        },
        golden=_golden(pipeline, task, x_eval, golden_rows),
        metadata=metadata,
    )


def evaluate(pipeline: Any, task: Task, x: pd.DataFrame, y: Any) -> dict[str, Any]:
    """Held-out results: accuracy, log loss, ROC AUC and per-class figures, or MAE, RMSE and R²."""
    predicted = pipeline.predict(x)
    if task == "regression":
        return {
            "rows": len(x),
            "mae": float(metrics.mean_absolute_error(y, predicted)),
            "rmse": float(np.sqrt(metrics.mean_squared_error(y, predicted))),
            "r2": float(metrics.r2_score(y, predicted)),
        }
    probabilities = pipeline.predict_proba(x)
    classes = list(pipeline.classes_)
    results: dict[str, Any] = {
        "rows": len(x),
        "accuracy": float(metrics.accuracy_score(y, predicted)),
        "logLoss": float(metrics.log_loss(y, probabilities, labels=classes)),
    }
    if len(set(np.asarray(y).tolist())) == len(classes):
        if len(classes) == 2:
            results["rocAuc"] = float(metrics.roc_auc_score(y, probabilities[:, 1]))
        else:
            results["rocAuc"] = float(metrics.roc_auc_score(y, probabilities, multi_class="ovr", labels=classes))
    report = metrics.classification_report(y, predicted, labels=classes, output_dict=True, zero_division=0)
    results["perClass"] = {
        str(plain(label)): {key: float(value) for key, value in report[str(label)].items()} for label in classes
    }
    return results


def fingerprint(x: pd.DataFrame, y: Any) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(list(map(str, x.columns))).encode())
    digest.update(pd.util.hash_pandas_object(x, index=False).to_numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(pd.Series(np.asarray(y)), index=False).to_numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def _golden(pipeline: Any, task: Task, x: pd.DataFrame, rows: int) -> Golden:
    # Spread the rows over the data, and include rows with missing values: imputation is where training
    # and serving most often part ways.
    with_missing = np.flatnonzero(x.isna().any(axis=1).to_numpy())[: rows // 4]
    spread = np.linspace(0, len(x) - 1, num=min(rows, len(x)), dtype=int)
    picked = sorted(set(spread.tolist()) | set(with_missing.tolist()))[:rows]
    sample = x.iloc[picked]
    inputs = [{name: plain(value) for name, value in record.items()} for record in sample.to_dict("records")]
    predictions = [plain(value) for value in pipeline.predict(sample)]
    probabilities = pipeline.predict_proba(sample).tolist() if task == "classification" else None
    return Golden(inputs=inputs, predictions=predictions, probabilities=probabilities)


def plain(value: Any) -> Any:
    """A JSON-friendly Python value; NaN and None both become None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to a bundle")


def _write_pipeline(pipeline: Any, directory: Path, allow_pickle: bool) -> None:
    if allow_pickle:
        joblib.dump(pipeline, directory / PICKLE_FILE)
        return
    skops.io.dump(pipeline, directory / SKOPS_FILE)


def file_digests(directory: Path) -> dict[str, str]:
    return {
        path.name: f"sha256:{_sha256(path)}"
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST
    }


def manifest_digest(files: dict[str, str]) -> str:
    canonical = json.dumps({"format": FORMAT, "files": files}, sort_keys=True, separators=(",", ":"))
    return f"sha256:{hashlib.sha256(canonical.encode()).hexdigest()}"


def _write_manifest(directory: Path) -> str:
    files = file_digests(directory)
    digest = manifest_digest(files)
    (directory / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files, "digest": digest}, indent=1))
    return digest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(
    uri: str = DEFAULT_URI,
    *,
    expected_digest: str | None = None,
    allow_pickle: bool = False,
    trusted_types: tuple[str, ...] = (),
    skip_pipeline: bool = False,
) -> Bundle:
    """Read and check a bundle from a local path, file:// or any fsspec URL (s3://...).

    Every file is checked against the manifest before anything is deserialized; the pipeline is read with
    skops (see `read_skops`), or with pickle only if `allow_pickle`.
    With `skip_pipeline` the pipeline is not read at all (pipeline is None), for inspection.
    """
    with tempfile.TemporaryDirectory(prefix="steward-bundle-") as scratch:
        directory = _local_copy(uri, Path(scratch))
        digest = verify_files(directory, uri)
        if expected_digest and expected_digest != digest:
            raise BundleError(f"bundle {uri} has digest {digest}, but {expected_digest} was expected")
        documents = {
            name: json.loads((directory / name).read_text())
            for name in ("schema.json", "baselines.json", "holdout.json", "golden.json", "metadata.json")
        }
        return Bundle(
            pipeline=None if skip_pipeline else _read_pipeline(directory, allow_pickle, trusted_types),
            schema=FeatureSchema.model_validate(documents["schema.json"]),
            baselines=Baselines.model_validate(documents["baselines.json"]),
            holdout=documents["holdout.json"],
            golden=Golden.model_validate(documents["golden.json"]),
            metadata=Metadata.model_validate(documents["metadata.json"]),
            digest=digest,
        )


def verify_files(directory: Path, uri: str | None = None) -> str:
    """Check every file against the manifest; return the bundle's digest."""
    where = uri or str(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"{where} is not a Steward bundle: it has no {MANIFEST}") from None
    except json.JSONDecodeError as error:
        raise BundleError(f"{where}: {MANIFEST} is not valid JSON ({error})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{where}: unknown bundle format {manifest.get('format')!r}, expected {FORMAT!r}")
    sealed: dict[str, str] = manifest.get("files", {})
    actual = file_digests(directory)
    problems = [f"{name} is missing" for name in sorted(set(sealed) - set(actual))]
    problems += [f"{name} is not in the manifest" for name in sorted(set(actual) - set(sealed))]
    problems += [
        f"{name} does not match its digest"
        for name in sorted(set(sealed) & set(actual))
        if sealed[name] != actual[name]
    ]
    digest = manifest_digest(sealed)
    if manifest.get("digest") != digest:
        problems.append("the manifest's own digest does not match its contents")
    if problems:
        raise BundleError(f"bundle {where} was changed after it was sealed: {'; '.join(problems)}")
    return digest


def _local_copy(uri: str, scratch: Path) -> Path:
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" not in uri:
        return Path(uri)
    try:
        filesystem, root = fsspec.core.url_to_fs(uri)
        entries = filesystem.ls(root.rstrip("/"), detail=True)
    except (ImportError, ValueError) as error:
        raise BundleError(f"cannot read {uri}: {error}") from error
    except FileNotFoundError:
        raise BundleError(f"no bundle at {uri}") from None
    for entry in entries:
        if entry["type"] == "file":
            filesystem.get_file(entry["name"], str(scratch / Path(entry["name"]).name))
    return scratch


def read_skops(path: Path, trusted_types: tuple[str, ...] = ()) -> Any:
    """A pipeline from a skops file, if it holds nothing but trusted types and its trees check out. Nothing in the
    file is imported or run before its types are known to be trusted."""
    try:
        untrusted, trusted = trusting.vet(path, trusted_types)
    except Exception as error:  # A hostile file may break the reader in any way.
        raise BundleError(f"{path.name} cannot be read: {type(error).__name__}: {error}") from None
    if untrusted:
        raise BundleError(
            f"the pipeline contains types that are not trusted: {', '.join(untrusted)}. Steward trusts "
            "scikit-learn's estimators and transformers (as skops does) and never a function or a private helper "
            "by default; review each, then trust it by name (--trust_type, STEWARD_TRUSTED_TYPES or "
            "spec.model.trustedTypes)"
        )
    try:
        pipeline = skops.io.load(path, trusted=trusted)
    except Exception as error:
        raise BundleError(f"{path.name} cannot be loaded: {type(error).__name__}: {error}") from None
    problems = trusting.tree_problems(pipeline)
    if problems:
        raise BundleError(f"the pipeline's trees are malformed, so predicting could crash: {'; '.join(problems[:5])}")
    return pipeline


def _read_pipeline(directory: Path, allow_pickle: bool, trusted_types: tuple[str, ...]) -> Any:
    skops_file, pickle_file = directory / SKOPS_FILE, directory / PICKLE_FILE
    if skops_file.exists():
        return read_skops(skops_file, trusted_types)
    if pickle_file.exists():
        if not allow_pickle:
            raise BundleError(
                f"the pipeline is a pickle ({PICKLE_FILE}), which can run any code when loaded; load it only "
                "from a source you trust, with --allow-pickle (STEWARD_ALLOW_PICKLE=true)"
            )
        return joblib.load(pickle_file)
    raise BundleError(f"the bundle holds no pipeline ({SKOPS_FILE} or {PICKLE_FILE})")
