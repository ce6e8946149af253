"""Training/serving parity: replay the bundle's golden examples through the serving path and compare."""

from __future__ import annotations

from typing import Any

import numpy as np

from steward_predictor.bundles import Bundle, plain
from steward_predictor.schemas import Validator

# Outputs must agree to this relative tolerance (probabilities and regression values); labels exactly.
RELATIVE_TOLERANCE = 1e-6
ABSOLUTE_TOLERANCE = 1e-9


def check(bundle: Bundle, validator: Validator | None = None) -> list[str]:
    """What no longer reproduces, in words; empty when training and serving agree."""
    validator = validator or Validator(bundle.schema)
    golden = bundle.golden
    checked = validator.check_records(golden.inputs)
    if checked.rejected:
        return [f"golden example refused by the feature schema: {problem}" for problem in checked.problems[:5]]
    problems = []
    predictions = [plain(value) for value in bundle.pipeline.predict(checked.frame)]
    for row, (expected, actual) in enumerate(zip(golden.predictions, predictions, strict=True)):
        if not _same(expected, actual):
            problems.append(f"golden example {row}: prediction {actual!r}, trained as {expected!r}")
    if golden.probabilities is not None:
        probabilities = np.asarray(bundle.pipeline.predict_proba(checked.frame))
        expected_probabilities = np.asarray(golden.probabilities)
        close = np.isclose(probabilities, expected_probabilities, rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE)
        for position in np.flatnonzero(~close.all(axis=1)):
            worst = float(np.max(np.abs(probabilities[position] - expected_probabilities[position])))
            problems.append(f"golden example {position}: probabilities differ by up to {worst:.3g}")
    return problems


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, float) or isinstance(actual, float):
        return bool(np.isclose(actual, expected, rtol=RELATIVE_TOLERANCE, atol=ABSOLUTE_TOLERANCE))
    return bool(expected == actual)
