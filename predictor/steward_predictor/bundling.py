"""steward-bundle: build, inspect and verify model bundles from the command line (and a training repo's CI)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from steward_predictor import scoring
from steward_predictor.bundles import Bundle, BundleError, build_bundle, load_bundle, read_skops
from steward_predictor.defaults import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """`steward-bundle`, on the arguments cli.bundle_parser() parsed."""
    try:
        if args.command == "build":
            return _build(args)
        if args.command == "inspect":
            return _inspect(args)
        return _verify(args)
    except BundleError as error:
        print(f"steward-bundle: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"steward-bundle: {error}", file=sys.stderr)
        return EXIT_USAGE


def _build(args: argparse.Namespace) -> int:
    pipeline = _read_pipeline(args.pipeline, args.allow_pickle, tuple(args.trust_type))
    train = _read_frame(args.train)
    x_train, y_train = _split(train, args.target, args.train)
    holdout = None
    if args.holdout:
        holdout = _split(_read_frame(args.holdout), args.target, args.holdout)
    overrides = json.loads(args.schema_overrides.read_text()) if args.schema_overrides else None
    bundle = build_bundle(
        pipeline,
        x_train,
        y_train,
        holdout=holdout,
        model_version=args.version,
        feature_set_version=args.feature_set_version,
        schema_overrides=overrides,
    )
    problems = scoring.replay(scoring.Scorer(bundle))
    if problems:
        raise BundleError(f"the pipeline does not reproduce its own outputs: {'; '.join(problems[:5])}")
    saved = bundle.save(args.output, allow_pickle=args.allow_pickle)
    print(f"sealed {args.output} (version {saved.version}, {saved.digest})", file=sys.stderr)
    print(saved.digest)
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    # Inspection reads what the bundle says about itself; it checks digests but never loads the pipeline.
    bundle = load_bundle(args.bundle, skip_pipeline=True)
    summary = _summary(bundle)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return EXIT_OK
    meta = bundle.metadata
    print(f"bundle      {args.bundle}\ndigest      {bundle.digest}")
    print(f"version     {meta.model_version} (feature set {meta.feature_set_version}), {meta.task}")
    if meta.classes:
        print(f"classes     {', '.join(map(str, meta.classes))}")
    print(f"trained     {meta.created_at} on {meta.training_rows} rows ({meta.training_fingerprint[:19]}...)")
    print(f"built with  python {meta.python}, scikit-learn {meta.sklearn}, numpy {meta.numpy}, pandas {meta.pandas}")
    figures = ", ".join(f"{key} {value:.4g}" for key, value in bundle.holdout.items() if isinstance(value, float))
    print(f"held out    {bundle.holdout.get('rows')} rows ({bundle.holdout.get('source')}): {figures}")
    print(f"golden      {len(bundle.golden.inputs)} examples")
    print("features")
    for feature in bundle.schema.features:
        if feature.kind == "numeric":
            detail = f"[{feature.minimum:g}, {feature.maximum:g}]" if feature.minimum is not None else "no values"
        else:
            detail = f"{len(feature.categories)} categories" if feature.categories is not None else "free text"
        nullable = ", may be missing" if feature.nullable else ""
        print(f"  {feature.name:<28} {feature.kind:<12} {detail}{nullable}")
    policy = bundle.schema.policy.model_dump(by_alias=True)
    print("policy      " + ", ".join(f"{key}={value}" for key, value in policy.items()))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    bundle = scoring.load(
        args.bundle, digest=args.digest, allow_pickle=args.allow_pickle, trusted_types=args.trust_type
    ).bundle
    print(
        f"ok: {args.bundle} ({bundle.version}, {bundle.digest}): {len(bundle.golden.inputs)} golden examples reproduce"
    )
    return EXIT_OK


def _summary(bundle: Bundle) -> dict[str, Any]:
    return {
        "digest": bundle.digest,
        "metadata": bundle.metadata.model_dump(mode="json", by_alias=True),
        "holdout": bundle.holdout,
        "schema": bundle.schema.model_dump(mode="json", by_alias=True),
        "golden": len(bundle.golden.inputs),
    }


def _read_pipeline(path: Path, allow_pickle: bool, trusted: tuple[str, ...]) -> Any:
    if path.suffix == ".skops":
        return read_skops(path, trusted)
    if not allow_pickle:
        raise ValueError(f"{path} is a pickle, which runs code when read: pass --allow-pickle if it is your own file")
    return joblib.load(path)


def _read_frame(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: expected a .csv or .parquet file")


def _split(frame: pd.DataFrame, target: str, path: Path) -> tuple[pd.DataFrame, pd.Series]:
    if target not in frame.columns:
        raise KeyError(f"{path} has no target column {target!r} (columns: {', '.join(map(str, frame.columns))})")
    return frame.drop(columns=[target]), frame[target]
