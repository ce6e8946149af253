"""The pieces every part of the API is made of: names, durations, CEL rules, and the base model."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict, JsonValue

GROUP = "steward.dev"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SHORT_NAMES = ["md", "mdep"]
COMMAND_KIND = "ModelCommand"
COMMAND_PLURAL = "modelcommands"
COMMAND_SHORT_NAMES = ["mcmd"]

_DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Five cron fields, or one of the @-macros a CronJob accepts.
_CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"

Duration = Annotated[str, Field(pattern=_DURATION_PATTERN, max_length=32)]
"""A Go-style duration such as 90s, 15m, 1h30m or 168h."""
Cron = Annotated[str, Field(pattern=_CRON_PATTERN, max_length=128)]
Percent = Annotated[int, Field(ge=1, le=100)]
Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")]
HOSTNAME = r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
"""Gateway API's hostname syntax: lowercase DNS labels, the first of which may be the wildcard *."""
Uri = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^([a-z][a-z0-9+.-]*://\S+|/\S*)$")]
Quantity = Annotated[
    str,
    Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$", max_length=32),
]
_PYTHON_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
Metric = Literal["accuracy", "rocAuc", "logLoss", "mae", "rmse", "r2"]


def seconds(duration: str) -> float:
    """The length of a Duration in seconds."""
    if not re.fullmatch(_DURATION_PATTERN, duration):
        raise ValueError(f"not a duration: {duration!r} (expected e.g. 90s, 15m, 1h30m)")
    return sum(
        float(n) * _DURATION_UNITS[unit] for n, _, unit in re.findall(r"([0-9]+(\.[0-9]+)?)(ms|s|m|h)", duration)
    )


def as_timedelta(duration: str) -> timedelta:
    return timedelta(seconds=seconds(duration))


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> JsonDict:
    """One CEL rule for the API server to enforce; `field_path` points the error at the offending field."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def validations(*rules: JsonDict) -> JsonDict:
    """The x-kubernetes-validations of a schema node."""
    entries: list[JsonValue] = [*rules]
    return {"x-kubernetes-validations": entries}


class Model(BaseModel):
    """Base of every part of the resource: camelCase on the wire, immutable once parsed."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        use_attribute_docstrings=True,
        # A newer CRD may carry fields this operator does not know yet; ignoring them beats crashing.
        extra="ignore",
    )
