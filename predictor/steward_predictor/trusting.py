"""What a bundle's pipeline may hold: skops' own trusted types, a few reviewed classes, and tree models whose node
arrays are proven in bounds. Never a function, a module or a prefix, unless a team names it."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import skops.io
from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE, X_BITSET_INNER_DTYPE
from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
from sklearn.tree._tree import TREE_LEAF, Tree

REVIEWED_CLASSES = frozenset(
    {
        # An array's item layout: a value, never called with data.
        "numpy.dtype",
        # Column selections in a ColumnTransformer.
        "builtins.slice",
        # An MLP's training state: plain arrays and numbers, not used to predict.
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    }
)
"""Classes skops does not trust by default that Steward reviewed and trusts: each is data, not code."""

CHECKED_CLASSES = frozenset(
    {"sklearn.tree._tree.Tree", "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"}
)
"""Tree storage skops leaves untrusted because scikit-learn follows its node indices without bounds checks: a
crafted file could make predict read out of bounds or loop forever. Steward trusts them only after `tree_problems`
proves every index in bounds and every path from the root to end at a leaf."""

_LOADERS = {"FunctionNode": "a function", "TypeNode": "a type", "MethodNode": "a method"}


def vet(path: Path, trusted_types: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """What a skops file holds beyond skops' own trusted types, read without loading it: the types Steward
    refuses, each with what it is when the file says so, and the ones it trusts (to pass to skops.io.load)."""
    names = skops.io.get_untrusted_types(file=path)
    allowed = REVIEWED_CLASSES | CHECKED_CLASSES | set(trusted_types)
    refused = [name for name in names if name not in allowed]
    kinds = _kinds(path) if refused else {}
    described = [f"{name} ({kinds[name]})" if name in kinds else name for name in refused]
    return described, [name for name in names if name in allowed]


def tree_problems(pipeline: Any) -> list[str]:
    """Why the trees inside a loaded pipeline cannot be trusted; empty when every node index is in bounds and
    every node's children come after it (so a walk from the root always reaches a leaf)."""
    problems: list[str] = []
    for where, tree, features in _trees(pipeline):
        if isinstance(tree, Tree):
            problems += [f"{where}: {problem}" for problem in _tree(tree, features)]
        else:
            problems += [f"{where}: {problem}" for problem in _tree_predictor(tree, features)]
    return problems


def _tree(tree: Tree, features: int | None) -> list[str]:
    count = tree.node_count
    if not 0 < count <= tree.capacity:
        return [f"node count {count} outside 1..{tree.capacity}"]
    if features is not None and tree.n_features != features:
        return [f"made for {tree.n_features} features, its estimator takes {features}"]
    problems = _nodes(np.asarray(tree.children_left), np.asarray(tree.children_right), tree.children_left == TREE_LEAF)
    internal = tree.children_left != TREE_LEAF
    feature = np.asarray(tree.feature)[internal]
    if feature.size and (feature.min() < 0 or feature.max() >= tree.n_features):
        problems.append(f"splits on a feature outside 0..{tree.n_features - 1}")
    if np.asarray(tree.value).shape[0] != count:
        problems.append("holds values for a different number of nodes")
    return problems


def _tree_predictor(predictor: TreePredictor, features: int | None) -> list[str]:
    nodes = predictor.nodes
    bitsets = (predictor.raw_left_cat_bitsets, predictor.binned_left_cat_bitsets)
    if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1 or not nodes.size:
        return ["its nodes are not a non-empty array of histogram-gradient-boosting nodes"]
    if any(
        not isinstance(bits, np.ndarray) or bits.dtype != X_BITSET_INNER_DTYPE or bits.ndim != 2 for bits in bitsets
    ):
        return ["its category bitsets are not arrays of bitsets"]
    if features is None:
        return ["found outside a HistGradientBoosting estimator, so its features cannot be checked"]
    leaf = nodes["is_leaf"].astype(bool)
    problems = _nodes(nodes["left"].astype(np.int64), nodes["right"].astype(np.int64), leaf)
    feature = nodes["feature_idx"][~leaf]
    if feature.size and (feature.min() < 0 or feature.max() >= features):
        problems.append(f"splits on a feature outside 0..{features - 1}")
    categorical = ~leaf & nodes["is_categorical"].astype(bool)
    available = min(len(bits) for bits in bitsets)
    if categorical.any() and nodes["bitset_idx"][categorical].max() >= available:
        problems.append(f"a categorical split names a bitset outside 0..{available - 1}")
    return problems


def _nodes(left: np.ndarray, right: np.ndarray, leaf: np.ndarray) -> list[str]:
    """Internal nodes' children come after them and exist: the walk from the root ends."""
    positions = np.arange(len(left))
    internal = ~leaf
    ordered = (left[internal] > positions[internal]) & (right[internal] > positions[internal])
    inside = (left[internal] < len(left)) & (right[internal] < len(left))
    if not (ordered & inside).all():
        return ["a node's children are missing or come before it (out of bounds, or a cycle)"]
    return []


def _trees(root: Any) -> Iterator[tuple[str, Tree | TreePredictor, int | None]]:
    """Every tree reachable from `root`, where it was found, and how many features its estimator takes."""
    seen: set[int] = set()
    pending: list[tuple[Any, str, int | None]] = [(root, "pipeline", None)]
    while pending:
        node, where, features = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Tree | TreePredictor):
            yield where, node, features
        elif isinstance(node, list | tuple):
            pending += [(item, f"{where}[{index}]", features) for index, item in enumerate(node)]
        elif isinstance(node, dict):
            pending += [(item, f"{where}[{key!r}]", features) for key, item in node.items()]
        elif isinstance(node, np.ndarray):
            if node.dtype == object:
                pending += [(item, f"{where}[{index}]", features) for index, item in enumerate(node.flat)]
        elif hasattr(node, "__dict__") and not isinstance(node, type):
            inner = getattr(node, "n_features_in_", features)
            inner = inner if isinstance(inner, int) else features
            pending += [(item, f"{where}.{name}", inner) for name, item in vars(node).items()]


def _kinds(path: Path) -> dict[str, str]:
    """What each function, type or method named in a skops file is, read from its schema without loading it."""
    found: dict[str, str] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return found
    pending: list[Any] = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            loader = node.get("__loader__")
            if (
                loader in _LOADERS
                and isinstance(node.get("__module__"), str)
                and isinstance(node.get("__class__"), str)
            ):
                found[f"{node['__module__']}.{node['__class__']}"] = _LOADERS[loader]
            pending += node.values()
        elif isinstance(node, list):
            pending += node
    return found
