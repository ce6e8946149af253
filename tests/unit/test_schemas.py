"""Feature schemas: inference from training data, and the checks every request goes through."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from steward_predictor.schemas import FeatureSchema, infer_schema
from steward_predictor.validating import Validator, frame_of

TRAINING = pd.DataFrame(
    {
        "age": [25.0, 40.0, np.nan, 61.0],
        "visits": [1, 3, 2, 8],
        "plan": ["basic", "pro", "basic", np.nan],
        "region": ["north", "south", "east", "west"],
    }
)


@pytest.fixture
def schema() -> FeatureSchema:
    return infer_schema(TRAINING)


def test_inference_records_kinds_ranges_categories_and_gaps(schema: FeatureSchema) -> None:
    age, visits, plan, region = schema.features
    assert (age.kind, age.minimum, age.maximum, age.nullable) == ("numeric", 25.0, 61.0, True)
    assert (visits.kind, visits.dtype, visits.nullable) == ("numeric", "int64", False)
    assert (plan.kind, plan.categories, plan.nullable, plan.missing_as) == (
        "categorical",
        ["basic", "pro"],
        True,
        "nan",
    )
    assert region.categories == ["east", "north", "south", "west"]
    assert not region.nullable


def test_missing_text_keeps_the_spelling_training_used() -> None:
    schema = infer_schema(pd.DataFrame({"plan": ["basic", None, "pro"]}))
    assert schema.features[0].missing_as == "none"
    checked = Validator(schema).check_records([{"plan": None}])
    assert checked.frame["plan"].tolist() == [None]


def test_mixed_types_and_booleans_are_refused_at_inference() -> None:
    with pytest.raises(ValueError, match="mixes text with"):
        infer_schema(pd.DataFrame({"code": ["a", 1]}))
    with pytest.raises(ValueError, match="is boolean"):
        infer_schema(pd.DataFrame({"flag": [True, False]}))


def test_good_records_and_rows_become_the_training_frame(schema: FeatureSchema) -> None:
    validator = Validator(schema)
    records = validator.check_records([{"age": 30, "visits": 2, "plan": None, "region": "north"}])
    rows = validator.check_records([[30, 2, None, "north"]])
    for checked in (records, rows):
        assert not checked.rejected
        assert checked.frame.columns.tolist() == ["age", "visits", "plan", "region"]
        assert checked.frame["age"].dtype == np.float64
        assert np.isnan(checked.frame["plan"].iloc[0])


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"age": "old", "visits": 1, "plan": "pro", "region": "north"},
            "row 0, field 'age': expected a number, got text 'old'",
        ),
        (
            {"age": True, "visits": 1, "plan": "pro", "region": "north"},
            "row 0, field 'age': expected a number, got a boolean (true)",
        ),
        ({"age": 30, "visits": 1, "plan": 7, "region": "north"}, "row 0, field 'plan': expected text, got int 7"),
        ({"age": 30, "visits": None, "plan": "pro", "region": "north"}, "row 0, field 'visits': value is missing"),
        ({"age": 30, "plan": "pro", "region": "north"}, "row 0, field 'visits': missing field"),
        ({"age": 30, "visits": 1, "plan": "pro", "region": "north", "id": 9}, "row 0, field 'id': unknown field"),
        ([30, 1, "pro"], "row 0, field '*': expected 4 values in the order"),
        ("age=30", "row 0, field '*': expected an object or a list of values, got text 'age=30'"),
        (
            {"age": float("inf"), "visits": 1, "plan": "pro", "region": "north"},
            "row 0, field 'age': expected a finite number",
        ),
    ],
)
def test_each_problem_is_named_with_field_and_row(schema: FeatureSchema, record: object, expected: str) -> None:
    checked = Validator(schema).check_records([record])
    assert list(checked.rejected) == [0]
    assert any(str(problem).startswith(expected) for problem in checked.problems), checked.problems
    assert len(checked.frame) == 0


def test_out_of_range_and_unseen_are_counted_by_default_and_rejected_on_request(schema: FeatureSchema) -> None:
    record = {"age": 130, "visits": 1, "plan": "enterprise", "region": "north"}
    checked = Validator(schema).check_records([record])
    assert not checked.rejected
    assert sorted(problem.problem for problem in checked.counted) == ["outOfRange", "unseenCategory"]
    strict = schema.with_overrides({"policy": {"outOfRange": "reject", "unseenCategory": "reject"}})
    checked = Validator(strict).check_records([record])
    assert [problem.problem for problem in checked.rejected[0]] == ["outOfRange", "unseenCategory"]


def test_only_bad_rows_are_rejected(schema: FeatureSchema) -> None:
    good = {"age": 30, "visits": 1, "plan": "pro", "region": "north"}
    checked = Validator(schema).check_records([good, {**good, "visits": "x"}, good])
    assert list(checked.rejected) == [1]
    assert checked.accepted.tolist() == [0, 2]
    assert len(checked.frame) == 2


def test_columns_are_checked_as_a_whole(schema: FeatureSchema) -> None:
    validator = Validator(schema)
    columns: dict[str, list[Any] | np.ndarray] = {
        "age": [30.0, 31.0],
        "visits": [1, 2],
        "plan": ["pro", "basic"],
        "region": ["north", "east"],
    }
    assert not validator.check_columns(columns, 2).rejected
    short = validator.check_columns({**columns, "visits": [1]}, 2)
    assert sorted(short.rejected) == [0, 1]
    assert "field 'visits': has 1 values where the request has 2 rows" in [str(p) for p in short.problems]
    missing = validator.check_columns({key: value for key, value in columns.items() if key != "region"}, 2)
    assert [str(p) for p in missing.problems] == ["field 'region': missing input"]
    typed = validator.check_columns({**columns, "age": np.array([30.0, np.nan])}, 2)
    assert not typed.rejected  # age is nullable


def test_validated_frames_equal_what_pandas_would_build(schema: FeatureSchema) -> None:
    columns = {
        "age": np.array([30.0, np.nan]),
        "visits": np.array([1.0, 2.0]),
        "plan": np.array(["pro", np.nan], dtype=object),
        "region": np.array(["north", "east"], dtype=object),
    }
    built = frame_of(columns, 2)
    pd.testing.assert_frame_equal(built, pd.DataFrame(columns))
    pd.testing.assert_frame_equal(frame_of({}, 0), pd.DataFrame({}, index=pd.RangeIndex(0)), check_column_type=False)


# Batch chunks read from files


def _as_read(columns: dict[str, Any]) -> dict[str, Any]:
    """The same columns as a file reader hands them over: text as categoricals."""
    return {
        name: pd.Series(values, dtype="category")
        if isinstance(values, np.ndarray) and values.dtype == object
        else values
        for name, values in columns.items()
    }


@pytest.mark.parametrize(
    ("plan", "region"),
    [
        (["pro", "basic", None], ["north", "east", "west"]),
        (["pro", "enterprise", None], ["north", "east", "west"]),
        (["pro", "basic", "pro"], ["north", None, "west"]),
        (["pro", 7, "basic"], ["north", "east", "west"]),
    ],
    ids=["clean", "unseen", "missing", "not-text"],
)
def test_categorical_text_is_checked_as_the_same_text_would_be(
    schema: FeatureSchema, plan: list[Any], region: list[Any]
) -> None:
    columns = {
        "age": np.array([30.0, 31.0, 32.0]),
        "visits": np.array([1, 2, 3]),
        "plan": np.array(plan, dtype=object),
        "region": np.array(region, dtype=object),
    }
    validator = Validator(schema)
    plain, coded = validator.check_columns(columns, 3), validator.check_columns(_as_read(columns), 3)
    pd.testing.assert_frame_equal(coded.frame, plain.frame)
    assert [str(problem) for problem in coded.problems] == [str(problem) for problem in plain.problems]
    assert [str(problem) for problem in coded.counted] == [str(problem) for problem in plain.counted]


def test_categories_no_row_uses_are_not_reported(schema: FeatureSchema) -> None:
    plan = pd.Series(pd.Categorical(["pro", "basic"], categories=["basic", "enterprise", "pro"]))
    columns: dict[str, list[Any] | pd.Series] = {
        "age": [30.0, 31.0],
        "visits": [1, 2],
        "plan": plan,
        "region": ["north", "east"],
    }
    checked = Validator(schema).check_columns(columns, 2)
    assert not checked.rejected
    assert not checked.counted
    assert checked.frame["plan"].tolist() == ["pro", "basic"]


def test_a_chunk_sized_frame_equals_what_pandas_would_build() -> None:
    rows = 20_000
    rng = np.random.default_rng(0)
    training = pd.DataFrame(
        {
            "age": rng.uniform(18, 90, rows),
            "plan": rng.choice(["basic", "pro"], rows).astype(object),
            "visits": rng.integers(0, 10, rows),
        }
    )
    checked = Validator(infer_schema(training)).check_columns(
        _as_read({str(name): column.to_numpy() for name, column in training.items()}), rows
    )
    assert not checked.rejected
    pd.testing.assert_frame_equal(checked.frame, pd.DataFrame(checked.columns))
    pd.testing.assert_frame_equal(checked.frame, training.astype({"visits": float}))
