"""Training/serving parity: whether a bundle's golden examples can be replayed, and whether what serving gives for
them is what training recorded."""

from __future__ import annotations

from typing import Any

import numpy as np

from steward_predictor.bundles import Bundle, plain

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


def differences(bundle: Bundle, predictions: np.ndarray, probabilities: np.ndarray | None) -> list[str]:
    """What serving gave for the golden examples (`predictions`, and `probabilities` for classifiers) and training
    did not, in words; empty when they agree. The golden examples must be free of `defects`."""
    golden = bundle.golden
    problems = [
        f"golden example {row}: prediction {actual!r}, trained as {expected!r}"
        for row, (expected, actual) in enumerate(zip(golden.predictions, map(plain, predictions), strict=True))
        if not _same(expected, actual)
    ]
    if golden.probabilities is None:
        return problems
    expected_probabilities = np.asarray(golden.probabilities)
    if probabilities is None:
        return [*problems, "the pipeline gives no probabilities, the golden examples have them"]
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
