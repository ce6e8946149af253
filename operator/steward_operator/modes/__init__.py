"""Serving modes: how a ModelDeployment's live versions become children, which release stages they support and
where their evidence comes from. One module per mode; `mode(name)` picks one, and a mode with no module here is
refused out loud."""

from __future__ import annotations

from typing import Any

from steward_operator import specs
from steward_operator.deciding import Policy
from steward_operator.modes.base import Live, Plan, Release, ServingMode
from steward_operator.modes.batch import Batch
from steward_operator.modes.online import Online
from steward_operator.modes.streaming import Streaming

_MODES: dict[str, ServingMode] = {"online": Online(), "batch": Batch(), "streaming": Streaming()}

__all__ = ["Live", "Plan", "Release", "ServingMode", "all_modes", "mode", "policy", "ready", "unsupported"]


def mode(name: str) -> ServingMode | None:
    """The mode named in spec.serving.mode, or None when this operator has none by that name."""
    return _MODES.get(name)


def all_modes() -> tuple[ServingMode, ...]:
    return tuple(_MODES.values())


def unsupported(name: str) -> tuple[str, str]:
    """The reason and message a ModelDeployment of a mode this operator has not is Stalled with."""
    return f"{name.capitalize()}NotSupported", f"{name} serving is not supported yet"


def policy(spec: specs.ModelDeploymentSpec) -> Policy:
    """What the decision engine judges a release of `spec` by: its rollout, laid out as its mode allows."""
    found = mode(spec.serving.mode)
    if found is None:
        raise ValueError(f"no serving mode {spec.serving.mode!r}: no release can be judged")
    return Policy(spec.rollout, found.layout)


def ready(child: dict[str, Any], answering: frozenset[str], *, current: bool = True) -> bool:
    """Whether `child` serves its version, as the mode that makes children of its kind reads it."""
    return any(found.ready(child, answering, current=current) for found in _MODES.values())
