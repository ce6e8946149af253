"""Feature schemas: what a model's inputs look like, inferred from training data, and what validating rows against
one finds (validating.py does the checking)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

Action = Literal["reject", "count"]
Problem = Literal["unknownField", "missingField", "wrongType", "missingValue", "outOfRange", "unseenCategory"]
PROBLEMS: tuple[Problem, ...] = (
    "unknownField",
    "missingField",
    "wrongType",
    "missingValue",
    "outOfRange",
    "unseenCategory",
)
# Past this many distinct values a text column is treated as free text: no unseen-category check.
MAX_CATEGORIES = 1000


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)


class Feature(_Model):
    """One input column."""

    name: str
    kind: Literal["numeric", "categorical"]
    dtype: str
    """The training column's dtype, for the record (int64, float64, object, ...)."""
    minimum: float | None = None
    maximum: float | None = None
    categories: list[str] | None = None
    """Values seen in training; None for free text."""
    nullable: bool = False
    """Whether the value may be missing: true when training data had missing values."""
    missing_as: Literal["nan", "none"] = "nan"
    """How training data spelled a missing text value. scikit-learn's imputers treat NaN as missing but
    None as a value of its own, so serving must hand the pipeline the same spelling training did."""


class ProblemHandling(_Model):
    """What to do with each kind of problem: reject the request (400, or the reject file in batch), or
    accept the row and count the problem in the metrics."""

    unknown_field: Action = "reject"
    missing_field: Action = "reject"
    wrong_type: Action = "reject"
    missing_value: Action = "reject"
    """A missing value in a feature that had none in training."""
    out_of_range: Action = "count"
    unseen_category: Action = "count"

    def action(self, problem: Problem) -> Action:
        return {
            "unknownField": self.unknown_field,
            "missingField": self.missing_field,
            "wrongType": self.wrong_type,
            "missingValue": self.missing_value,
            "outOfRange": self.out_of_range,
            "unseenCategory": self.unseen_category,
        }[problem]


class FeatureSchema(_Model):
    """The inputs a model expects, in the order its pipeline was trained on."""

    features: list[Feature]
    policy: ProblemHandling = ProblemHandling()

    @property
    def names(self) -> list[str]:
        return [feature.name for feature in self.features]

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    def with_overrides(self, overrides: Mapping[str, Any]) -> FeatureSchema:
        """A copy with some features' settings or the policy replaced, e.g. {"policy": {"outOfRange": "reject"},
        "features": {"age": {"minimum": 0, "maximum": 120}}}."""
        unknown = set(overrides) - {"policy", "features"}
        if unknown:
            raise ValueError(f"schema overrides may set 'policy' and 'features', not {sorted(unknown)}")
        policy = ProblemHandling.model_validate(
            {**self.policy.model_dump(by_alias=True), **overrides.get("policy", {})}
        )
        changes = dict(overrides.get("features", {}))
        missing = set(changes) - set(self.names)
        if missing:
            raise ValueError(f"schema overrides name features the data does not have: {sorted(missing)}")
        features = [
            Feature.model_validate({**feature.model_dump(by_alias=True), **changes.get(feature.name, {})})
            for feature in self.features
        ]
        return FeatureSchema(features=features, policy=policy)


def infer_schema(frame: pd.DataFrame) -> FeatureSchema:
    """Infer a schema from training data: numeric columns get their observed range, text and categorical
    columns their set of values; a column with missing values is nullable."""
    features = []
    for name in frame.columns:
        if not isinstance(name, str):
            raise ValueError(f"feature names must be strings; column {name!r} is a {type(name).__name__}")
        column = frame[name]
        nullable = bool(column.isna().any())
        if pd.api.types.is_bool_dtype(column):
            raise ValueError(f"column {name!r} is boolean: cast it to int or str before building the bundle")
        if pd.api.types.is_numeric_dtype(column):
            present = column.dropna()
            features.append(
                Feature(
                    name=name,
                    kind="numeric",
                    dtype=str(column.dtype),
                    minimum=float(present.min()) if len(present) else None,
                    maximum=float(present.max()) if len(present) else None,
                    nullable=nullable,
                )
            )
        else:
            values = column.dropna()
            not_text = {type(value).__name__ for value in values if not isinstance(value, str)}
            if not_text:
                raise ValueError(f"column {name!r} mixes text with {sorted(not_text)}: make it one type")
            distinct = sorted(set(values))
            nones = sum(value is None for value in column)
            features.append(
                Feature(
                    name=name,
                    kind="categorical",
                    dtype=str(column.dtype),
                    categories=distinct if len(distinct) <= MAX_CATEGORIES else None,
                    nullable=nullable,
                    missing_as="none" if nones > column.isna().sum() - nones else "nan",
                )
            )
    return FeatureSchema(features=features)


@dataclass(frozen=True)
class Violation:
    """One problem with one value, one row, or (row None) the whole input."""

    row: int | None
    field: str
    problem: Problem
    detail: str
    fatal: bool = False
    """The input cannot be scored at all, whatever the policy says (a row that is not a record, say)."""

    def __str__(self) -> str:
        where = f"row {self.row}, " if self.row is not None else ""
        return f"{where}field '{self.field}': {self.detail}"


@dataclass
class Checked:
    """Rows after validation: the frame the pipeline scores, and what was wrong."""

    frame: pd.DataFrame
    """Accepted rows, columns in schema order, typed as in training (float64 or object with NaN for missing)."""
    columns: dict[str, np.ndarray]
    """The frame's columns as arrays, for code that needs no DataFrame."""
    accepted: np.ndarray
    """Positions, in the input, of the accepted rows."""
    rejected: dict[int, list[Violation]] = field(default_factory=dict)
    """Input position -> the problems that got the row rejected."""
    counted: list[Violation] = field(default_factory=list)
    """Problems that were accepted and only counted."""

    @property
    def problems(self) -> list[Violation]:
        """Every rejecting problem once, in input order."""
        seen: dict[int, Violation] = {}
        for row in sorted(self.rejected):
            for violation in self.rejected[row]:
                seen.setdefault(id(violation), violation)
        return list(seen.values())
