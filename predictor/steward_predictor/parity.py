"""Training/serving parity: replay the bundle's golden examples through the serving path and compare."""

from __future__ import annotations

from typing import Any

import numpy as np

from steward_predictor.bundles import Bundle, plain
from steward_predictor.schemas import Validator

# Outputs must agree to this relative tolerance (probabilities and regression values); labels exactly.
RELATIVE_TOLERANCE = 1e-6
ABSOLUTE_TOLERANCE = 1e-9


def defects(bundle: Bundle) -> list[str]:
    """What makes the golden examples unfit to replay, in words: none at all (parity would hold by vacuous truth),
    or outputs that do not line up with the inputs."""
    golden = bundle.golden
    rows = len(golden.inputs)
    if not rows:
        return ["the bundle holds no golden examples, so training/serving parity cannot be checked"]
    found = []
    if len(golden.predictions) != rows:
        found.append(f"{rows} golden inputs but {len(golden.predictions)} predictions")
    if golden.probabilities is not None:
        if len(golden.probabilities) != rows:
            found.append(f"{rows} golden inputs but {len(golden.probabilities)} rows of probabilities")
        classes = len(bundle.metadata.classes or [])
        widths = sorted({len(row) for row in golden.probabilities})
        if widths and widths != [classes]:
            found.append(
                f"golden probabilities have {' or '.join(map(str, widths))} columns where the model has {classes} "
                "classes"
            )
    return found


def check(bundle: Bundle, validator: Validator | None = None) -> list[str]:
    """What no longer reproduces, in words; empty when training and serving agree."""
    unfit = defects(bundle)
    if unfit:
        return unfit
    validator = validator or Validator(bundle.schema)
    golden = bundle.golden
    checked = validator.check_records(golden.inputs)
    if checked.rejected:
        return [f"golden example refused by the feature schema: {problem}" for problem in checked.problems[:5]]
    try:
        predictions = [plain(value) for value in bundle.pipeline.predict(checked.frame)]
        probabilities = None
        if golden.probabilities is not None:
            probabilities = np.asarray(bundle.pipeline.predict_proba(checked.frame))
    except Exception as error:  # a pipeline that fails on its own golden examples is the finding itself
        return [f"the pipeline fails on the golden examples ({type(error).__name__}: {error})"]
    problems = []
    for row, (expected, actual) in enumerate(zip(golden.predictions, predictions, strict=True)):
        if not _same(expected, actual):
            problems.append(f"golden example {row}: prediction {actual!r}, trained as {expected!r}")
    if probabilities is not None:
        expected_probabilities = np.asarray(golden.probabilities)
        if probabilities.shape != expected_probabilities.shape:
            shapes = f"{probabilities.shape}, the golden examples {expected_probabilities.shape}"
            return [*problems, f"the pipeline gives probabilities of shape {shapes}"]
        close = np.isclose(probabilities, expected_probabilities, rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE)
        for position in np.flatnonzero(~close.all(axis=1)):
            worst = float(np.max(np.abs(probabilities[position] - expected_probabilities[position])))
            problems.append(f"golden example {position}: probabilities differ by up to {worst:.3g}")
    return problems


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, float) or isinstance(actual, float):
        return bool(np.isclose(actual, expected, rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE))
    return bool(expected == actual)
