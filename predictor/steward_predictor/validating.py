"""Validating rows against a feature schema: every request, golden example and batch chunk is checked here before
the pipeline sees it, and typed as the pipeline was trained on."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from steward_predictor.schemas import PROBLEMS, Checked, Feature, FeatureSchema, Violation

_NUMBERS = {int, float, type(None)}
# From this many rows on (a batch chunk, not a request), a validated frame is built over the block its numbers
# were checked in rather than a copy of it: the copy then costs more than pandas' bookkeeping saves.
BLOCK_ROWS = 10_000
# pandas warns of a fragmented frame past a hundred blocks: beyond that many other columns, copy after all.
MAX_INSERTS = 64


class Validator:
    """Checks values against a schema. Built once per bundle, used for every request or chunk."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.schema = schema
        self._names = schema.names
        self._known = set(self._names)
        self._categories = {
            feature.name: frozenset(feature.categories) for feature in schema.features if feature.categories is not None
        }
        self._rejects = {problem: schema.policy.action(problem) == "reject" for problem in PROBLEMS}
        self._fields = operator.itemgetter(*self._names) if len(self._names) > 1 else _single(self._names)
        numeric = [feature for feature in schema.features if feature.kind == "numeric"]
        self._numeric_names = [feature.name for feature in numeric]
        self._minimums = np.array([-np.inf if f.minimum is None else f.minimum for f in numeric])[:, np.newaxis]
        self._maximums = np.array([np.inf if f.maximum is None else f.maximum for f in numeric])[:, np.newaxis]
        self._nullable = np.array([feature.nullable for feature in numeric], dtype=bool)

    def check_records(self, records: Sequence[Any]) -> Checked:
        """Validate row records ({"age": 41, "plan": "pro"}) or rows in schema order ([41, "pro"])."""
        rows = len(records)
        width = len(self._names)
        if all(type(record) is dict and len(record) == width for record in records):
            # The common case, every record with exactly the schema's fields (as many, and all of them present):
            # gather the columns in one pass.
            try:
                fields = list(map(self._fields, records))
            except KeyError:
                pass
            else:
                transposed = zip(*fields, strict=True) if rows else ([] for _ in self._names)
                return self._check(dict(zip(self._names, transposed, strict=True)), rows, [])
        columns, violations = self._gather(records)
        return self._check(columns, rows, violations)

    def _gather(self, records: Sequence[Any]) -> tuple[dict[str, list[Any]], list[Violation]]:
        """Columns from records of any shape, with what was structurally wrong with each."""
        rows = len(records)
        columns: dict[str, list[Any]] = {name: [None] * rows for name in self._names}
        given: dict[str, np.ndarray] = {name: np.zeros(rows, dtype=bool) for name in self._names}
        violations: list[Violation] = []
        for row, record in enumerate(records):
            if isinstance(record, Mapping):
                for name, value in record.items():
                    if name in self._known:
                        columns[name][row] = value
                        given[name][row] = True
                    else:
                        violations.append(Violation(row, _clip(str(name)), "unknownField", "unknown field"))
            elif isinstance(record, list | tuple) and len(record) == len(self._names):
                for name, value in zip(self._names, record, strict=True):
                    columns[name][row] = value
                    given[name][row] = True
            else:
                if isinstance(record, list | tuple):
                    detail = f"expected {len(self._names)} values in the order {self._names}, got {len(record)}"
                    violations.append(Violation(row, "*", "missingField", detail, fatal=True))
                else:
                    detail = f"expected an object or a list of values, got {_describe(record)}"
                    violations.append(Violation(row, "*", "wrongType", detail, fatal=True))
                for mask in given.values():
                    mask[row] = True
        for name, mask in given.items():
            violations.extend(
                Violation(int(row), name, "missingField", "missing field") for row in np.flatnonzero(~mask)
            )
        return columns, violations

    def check_columns(self, columns: Mapping[str, Sequence[Any] | np.ndarray | pd.Series], rows: int) -> Checked:
        """Validate named columns of equal length (a V2 request, or a batch chunk)."""
        violations = [
            Violation(None, _clip(str(name)), "unknownField", "unknown input")
            for name in columns
            if name not in self._known
        ]
        violations.extend(
            Violation(
                None, name, "wrongType", f"has {len(values)} values where the request has {rows} rows", fatal=True
            )
            for name, values in columns.items()
            if len(values) != rows
        )
        violations.extend(
            Violation(None, name, "missingField", "missing input") for name in self._names if name not in columns
        )
        if any(violation.fatal for violation in violations):
            return self._check({}, rows, violations)
        return self._check({name: columns[name] for name in self._names if name in columns}, rows, violations)

    def _check(
        self, columns: Mapping[str, Sequence[Any] | np.ndarray | pd.Series], rows: int, violations: list[Violation]
    ) -> Checked:
        typed, block = self._clean_numbers(columns)
        for feature in self.schema.features:
            values = columns.get(feature.name)
            if feature.name in typed:
                continue
            if values is None:
                typed[feature.name] = np.full(
                    rows, _missing(feature), dtype=float if feature.kind == "numeric" else object
                )
            elif feature.kind == "numeric":
                typed[feature.name] = self._numeric(feature, values, violations)
            else:
                typed[feature.name] = self._categorical(feature, values, violations)

        rejected: dict[int, list[Violation]] = {}
        counted: list[Violation] = []
        for violation in violations:
            if violation.fatal or self._rejects[violation.problem]:
                for row in range(rows) if violation.row is None else [violation.row]:
                    rejected.setdefault(row, []).append(violation)
            else:
                counted.append(violation)
        keep = np.ones(rows, dtype=bool)
        keep[list(rejected)] = False
        # In schema order; passing columns= as well would make pandas reindex, at several times the cost.
        ordered = {name: typed[name] if not rejected else typed[name][keep] for name in self._names}
        if block is not None and not rejected and rows >= BLOCK_ROWS and len(ordered) - len(block) < MAX_INSERTS:
            frame = _frame_over(block, self._numeric_names, ordered)
        else:
            frame = frame_of(ordered, len(next(iter(ordered.values()))) if ordered else 0)
        return Checked(frame=frame, columns=ordered, accepted=np.flatnonzero(keep), rejected=rejected, counted=counted)

    def _clean_numbers(
        self, columns: Mapping[str, Sequence[Any] | np.ndarray | pd.Series]
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The numeric columns with nothing to report, checked together as one block, and that block when it
        holds every numeric column. The others are left to the per-column checks that name each problem."""
        names: list[str] = []
        parts: list[Any] = []
        for name in self._numeric_names:
            values = columns.get(name)
            array = values.to_numpy() if isinstance(values, pd.Series) else values
            if isinstance(array, np.ndarray):
                plain = array.dtype.kind in "fiu"
            else:
                plain = array is not None and set(map(type, array)) <= _NUMBERS
            if plain:
                names.append(name)
                parts.append(array)
        if not names:
            return {}, None
        block = np.array(parts, dtype=float)
        rows = (
            [self._numeric_names.index(name) for name in names]
            if len(names) < len(self._numeric_names)
            else slice(None)
        )
        # NaN compares false both ways, so a missing value is never out of range.
        flagged = (
            np.isinf(block).any(axis=1)
            | (np.isnan(block).any(axis=1) & ~self._nullable[rows])
            | ((block < self._minimums[rows]) | (block > self._maximums[rows])).any(axis=1)
        )
        clean = {name: block[position] for position, name in enumerate(names) if not flagged[position]}
        return clean, block if len(clean) == len(self._numeric_names) else None

    def _numeric(self, feature: Feature, values: Any, violations: list[Violation]) -> np.ndarray:
        array = values.to_numpy() if isinstance(values, pd.Series) else values
        if isinstance(array, np.ndarray) and array.dtype.kind in "fiu":
            out = array.astype(float, copy=False)
        elif not isinstance(array, np.ndarray) and set(map(type, array)) <= _NUMBERS:
            out = np.array(array, dtype=float)
        else:
            out = np.empty(len(values), dtype=float)
            for row, value in enumerate(values):
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    out[row] = np.nan
                elif isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
                    out[row] = value
                else:
                    violations.append(
                        Violation(row, feature.name, "wrongType", f"expected a number, got {_describe(value)}")
                    )
                    out[row] = np.nan
        missing = np.isnan(out)
        infinite = np.isinf(out)
        if infinite.any():
            violations.extend(
                Violation(int(position), feature.name, "wrongType", "expected a finite number")
                for position in np.flatnonzero(infinite)
            )
            out[infinite] = np.nan
        if not feature.nullable and missing.any():
            reported = _reported(violations, feature.name)
            violations.extend(
                Violation(int(row), feature.name, "missingValue", "value is missing and the model was trained without")
                for row in np.flatnonzero(missing)
                if reported is not None and int(row) not in reported
            )
        if feature.minimum is None or feature.maximum is None:
            return out
        # NaN compares false both ways, so missing values are never out of range.
        outside = (out < feature.minimum) | (out > feature.maximum)
        if not outside.any():
            return out
        if not self._rejects["outOfRange"]:
            # Counted problems are only tallied: spare the text nobody reads.
            violations.extend(Violation(int(row), feature.name, "outOfRange", "") for row in np.flatnonzero(outside))
            return out
        violations.extend(
            Violation(
                int(position),
                feature.name,
                "outOfRange",
                f"{out[position]:g} is outside the training range [{feature.minimum:g}, {feature.maximum:g}]",
            )
            for position in np.flatnonzero(outside)
        )
        return out

    def _categorical(self, feature: Feature, values: Any, violations: list[Violation]) -> np.ndarray:
        known = self._categories.get(feature.name)
        missing = _missing(feature)
        if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
            coded = self._coded(feature, values, known, missing)
            if coded is not None:
                return coded
            # Something to report: the values as the row-by-row check has always seen a chunk's column.
            values = values.to_numpy()
        array = values.to_numpy(dtype=object) if isinstance(values, pd.Series) else np.asarray(values, dtype=object)
        if array.ndim == 1:
            gaps = pd.isna(array)
            present = array[~gaps] if gaps.any() else array
            if (
                set(map(type, present)) <= {str}
                and (known is None or known.issuperset(present))
                and (feature.nullable or not gaps.any())
            ):
                # Text seen in training, and gaps only where the model expects them: nothing to report, and
                # only the gaps to respell.
                out = array.copy()
                out[gaps] = missing
                return out
        out = np.empty(len(values), dtype=object)
        reported = _reported(violations, feature.name) if not feature.nullable else None
        for row, value in enumerate(values):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                out[row] = missing
                if reported is not None and row not in reported:
                    violations.append(
                        Violation(
                            row, feature.name, "missingValue", "value is missing and the model was trained without"
                        )
                    )
            elif isinstance(value, str):
                out[row] = value
                if known is not None and value not in known:
                    violations.append(
                        Violation(row, feature.name, "unseenCategory", f"'{_clip(value)}' was not seen in training")
                    )
            else:
                out[row] = missing
                violations.append(Violation(row, feature.name, "wrongType", f"expected text, got {_describe(value)}"))
        return out

    @staticmethod
    def _coded(
        feature: Feature, values: pd.Series, known: frozenset[str] | None, missing: float | None
    ) -> np.ndarray | None:
        """A categorical column (a batch chunk read from a dictionary-encoded file) checked by its distinct
        values rather than row by row; None when there is something to report, for the row-by-row check to
        name."""
        categories = values.cat.categories.to_numpy(dtype=object)
        codes = values.cat.codes.to_numpy()
        # Code -1 is a gap; shifted by one, the counts say which values occur and whether any gap does.
        used = np.bincount(codes.astype(np.intp) + 1, minlength=len(categories) + 1)
        present = categories[used[1:] > 0]
        if (
            set(map(type, present)) <= {str}
            and (known is None or known.issuperset(present))
            and (feature.nullable or not used[0])
        ):
            # The values as the pipeline takes them: text as it was, gaps spelled as in training.
            spelled = np.append(categories, np.array([missing], dtype=object))
            result: np.ndarray = spelled[codes]
            return result
        return None


def frame_of(columns: dict[str, np.ndarray], rows: int) -> pd.DataFrame:
    """A DataFrame over validated columns. pandas' own constructor re-checks lengths and dimensions that
    validation has just guaranteed, at twice the cost for a request-sized frame; skip that where pandas
    offers the way, and fall back to the constructor where it does not."""
    build = getattr(pd.DataFrame, "_from_arrays", None)
    if build is None:
        return pd.DataFrame(columns, copy=False)
    frame: pd.DataFrame = build(
        list(columns.values()), columns=list(columns), index=pd.RangeIndex(rows), verify_integrity=False
    )
    return frame


def _frame_over(block: np.ndarray, names: list[str], columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A frame whose numeric columns are `block` itself (rows of it, `names` in order): pandas keeps such
    columns as one 2-D block anyway, so a chunk's numbers are not copied again. The other columns are put in
    between, in the order of `columns`."""
    frame = pd.DataFrame(block.T, columns=names, copy=False)
    numeric = set(names)
    for position, name in enumerate(columns):
        if name not in numeric:
            frame.insert(position, name, columns[name])
    return frame


def _single(names: list[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """itemgetter returns a bare value for one key; the transposition wants a tuple either way."""
    return lambda record: tuple(record[name] for name in names)


def _missing(feature: Feature) -> float | None:
    return None if feature.missing_as == "none" else np.nan


def _reported(violations: list[Violation], name: str) -> set[int] | None:
    """Rows already reported for a field (a missing field is not also a missing value); None: the whole input."""
    rows: set[int] = set()
    for violation in violations:
        if violation.field == name:
            if violation.row is None:
                return None
            rows.add(violation.row)
    return rows


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f"text '{_clip(value)}'"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"{type(value).__name__} {_clip(repr(value))}"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
