"""Batch scoring's logic without files or processes: where data goes, how a chunk is validated and scored,
what a scored row and a rejected row carry, and what the command line promises."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steward_predictor import batch, chunks, cli, datasets, defaults, locations
from steward_predictor.scoring import Scorer
from tests.support import models
from tests.support.models import Trained

RUN_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return models.breast_cancer(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return models.wine(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return models.diabetes(tmp_path_factory.mktemp("models"))


def _scorer(trained: Trained, id_column: str | None = None) -> chunks.ChunkScorer:
    """A batch run's scorer of chunks, with `trained`'s bundle."""
    return chunks.ChunkScorer(Scorer(trained.bundle), run_id=RUN_ID, id_column=id_column)


def _with_problems(x: pd.DataFrame) -> pd.DataFrame:
    """x with a number given as a word (row 2), a value missing where training had none (row 5), an unseen
    category (row 7, only counted) and a patient id column."""
    frame = x.reset_index(drop=True).astype({"mean radius": object, "size_band": object})
    frame.loc[2, "mean radius"] = "twelve"
    frame.loc[5, "mean area"] = np.nan
    frame.loc[7, "size_band"] = "enormous"
    frame.insert(0, "patient", [f"p{index:04d}" for index in range(len(frame))])
    return frame


# Where data is read from and written to


@pytest.mark.parametrize(
    ("uri", "format"),
    [
        ("scores.csv", "csv"),
        ("/data/Scores.CSV", "csv"),
        ("file:///data/scores.parquet", "parquet"),
        ("scores.pq", "parquet"),
    ],
)
def test_file_formats_are_inferred_from_the_suffix(uri: str, format: defaults.Format) -> None:
    assert locations.locate(uri).format == format


def test_database_urls_are_sql_and_name_a_table() -> None:
    location = locations.locate("postgresql://reader@warehouse:5432/analytics", table="customers")
    assert (location.format, location.table) == ("sql", "customers")
    # The bare scheme gets the driver Steward ships with, whatever SQLAlchemy's default.
    assert location.uri.startswith("postgresql+psycopg://")


def test_sqlite_files_are_named_by_their_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = locations.locate("sqlite:///rows.db", table="rows")
    absolute = locations.locate(f"sqlite:///{tmp_path / 'rows.db'}", table="rows")
    assert relative.uri == absolute.uri


def test_passwords_are_kept_out_of_what_is_displayed() -> None:
    location = locations.locate("postgresql://scorer:s3cret@warehouse/analytics", table="scores")
    assert "s3cret" not in location.display
    assert "s3cret" in location.uri


def test_the_format_flag_overrides_the_suffix() -> None:
    assert locations.locate("export.txt", "csv").format == "csv"


@pytest.mark.parametrize(
    ("uri", "format", "table", "message"),
    [
        ("rows.txt", None, None, "--input-format"),
        ("rows", None, None, "cannot tell the format"),
        ("postgresql://warehouse/analytics", None, None, "--input-table"),
        ("rows.csv", None, "rows", "only with a database URL"),
        ("s3://bucket/rows/", None, None, "cannot tell the format"),
        ("nosuch://bucket/rows.parquet", None, None, "no filesystem is known for nosuch://"),
        ("nosuch://host/rows", None, "rows", "neither a file .* nor a database URL"),
    ],
)
def test_unusable_locations_say_what_to_change(
    uri: str, format: defaults.Format | None, table: str | None, message: str
) -> None:
    with pytest.raises(locations.LocationError, match=message):
        locations.locate(uri, format, table)


@pytest.mark.parametrize(
    ("output", "table", "rejects", "rejects_table"),
    [
        ("/out/scores.csv", None, "/out/scores.rejects.csv", None),
        ("/out/scores.parquet", None, "/out/scores.rejects.parquet", None),
        ("sqlite:////out/db.sqlite", "scores", "sqlite:////out/db.sqlite", "scores_rejects"),
    ],
)
def test_rejects_go_beside_the_output(output: str, table: str | None, rejects: str, rejects_table: str | None) -> None:
    location = locations.rejects_beside(locations.locate(output, table=table, role="output"))
    assert (location.uri, location.table) == (rejects, rejects_table)


def test_a_file_named_without_a_suffix_gets_rejects_beside_it() -> None:
    location = locations.rejects_beside(locations.locate("/out/scores", "csv", role="output"))
    assert (location.uri, location.format) == ("/out/scores.rejects", "csv")


def _read(location: locations.Location, columns: list[str], **options: Any) -> list[pd.DataFrame]:
    with datasets.Transaction() as transaction:
        return list(transaction.read(location, columns, chunk_rows=2, prepare=lambda frame: frame, **options))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_text_named_as_categories_comes_out_of_files_as_categoricals(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame({"plan": ["pro", None, "basic"], "age": [30.5, 41.0, 52.5], "code": [1, 2, 3]})
    path = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    chunks = _read(
        locations.locate(str(path)),
        ["plan", "age", "code"],
        numbers=["age"],
        texts=["plan"],
        categories=["plan", "code"],
    )
    assert [len(chunk) for chunk in chunks] == [2, 1]
    read = pd.concat(chunks, ignore_index=True)
    assert all(isinstance(chunk["plan"].dtype, pd.CategoricalDtype) for chunk in chunks)
    assert read["plan"].astype(object).where(read["plan"].notna(), None).tolist() == ["pro", None, "basic"]
    assert read["age"].tolist() == [30.5, 41.0, 52.5]
    # Only text becomes a categorical: a column of numbers stays numbers, for validation to judge.
    assert read["code"].dtype == np.int64


def test_parquet_dictionaries_go_to_columns_with_few_distinct_values(tmp_path: Path) -> None:
    rows = 100
    table = pa.table(
        {
            "unique": pa.array(range(rows)),
            "constant": pa.array(["v1"] * rows),
            "few": pa.array([row % 3 for row in range(rows)]),
            "unique_first": pa.array([*range(20), *([0] * (rows - 20))]),
        }
    )
    location = locations.Location(uri=str(tmp_path / "scores.parquet"), format="parquet")
    with datasets.Transaction() as transaction:
        writer = transaction.writer(location, "fail")
        writer.write(table)
        writer.publish()
    written = pq.ParquetFile(location.path).metadata.row_group(0)
    dictionary = {
        written.column(index).path_in_schema: "RLE_DICTIONARY" in written.column(index).encodings
        for index in range(written.num_columns)
    }
    # At most a tenth as many distinct values as rows: 3 and 1 are; 100 and 21 are not.
    assert dictionary == {"unique": False, "constant": True, "few": True, "unique_first": False}


# Scoring a chunk


def test_scores_are_the_pipelines_predictions_and_probabilities(breast_cancer: Trained) -> None:
    scorer = _scorer(breast_cancer)
    chunk = scorer.score(breast_cancer.x_test.reset_index(drop=True))
    scores = chunk.scores.to_pandas()
    assert chunk.rejected == 0
    np.testing.assert_array_equal(scores["prediction"], breast_cancer.pipeline.predict(breast_cancer.x_test))
    probabilities = breast_cancer.pipeline.predict_proba(breast_cancer.x_test)
    np.testing.assert_array_equal(scores[["probability_0", "probability_1"]].to_numpy(), probabilities)


def test_every_scored_row_carries_its_row_ids_model_and_time(breast_cancer: Trained) -> None:
    scorer = _scorer(breast_cancer, id_column="patient")
    moment = datetime(2025, 3, 1, 2, 30, tzinfo=UTC)
    frame = _with_problems(breast_cancer.x_test)
    scores = scorer.score(frame, first_row=1000, scored_at=moment).scores.to_pandas()
    assert list(scores.columns) == [
        "row",
        "patient",
        "request_id",
        "model_version",
        "bundle_digest",
        "scored_at",
        "prediction",
        "probability_0",
        "probability_1",
    ]
    kept = [row for row in range(len(frame)) if row not in (2, 5)]
    assert scores["row"].tolist() == [1000 + row for row in kept]
    assert scores["patient"].tolist() == [f"p{row:04d}" for row in kept]
    assert scores["request_id"].tolist() == [f"{RUN_ID}-{1000 + row}" for row in kept]
    assert set(scores["model_version"]) == {"v1"}
    assert set(scores["bundle_digest"]) == {breast_cancer.bundle.digest}
    assert set(scores["scored_at"]) == {pd.Timestamp(moment)}


def test_rejected_rows_keep_their_values_and_say_why_in_input_rows(breast_cancer: Trained) -> None:
    scorer = _scorer(breast_cancer, id_column="patient")
    chunk = scorer.score(_with_problems(breast_cancer.x_test), first_row=1000)
    rejects = chunk.rejects.to_pandas()
    assert rejects["row"].tolist() == [1002, 1005]
    assert rejects["patient"].tolist() == ["p0002", "p0005"]
    assert rejects.loc[0, "mean radius"] == "twelve"
    assert rejects.loc[0, "reasons"] == "row 1002, field 'mean radius': expected a number, got text 'twelve'"
    assert rejects.loc[1, "mean area"] is None
    assert rejects.loc[1, "reasons"].startswith("row 1005, field 'mean area': value is missing")
    assert list(rejects.columns) == ["row", "patient", *breast_cancer.bundle.schema.names, "reasons"]


def test_problems_the_policy_only_counts_are_scored_and_counted(breast_cancer: Trained) -> None:
    scorer = _scorer(breast_cancer)
    chunk = scorer.score(_with_problems(breast_cancer.x_test))
    assert 7 in chunk.scores.column("row").to_pylist()
    assert chunk.counted["unseenCategory"] == 1


def test_every_reason_of_a_row_is_given(breast_cancer: Trained) -> None:
    frame = breast_cancer.x_test.reset_index(drop=True).astype({"mean radius": object})
    frame.loc[0, "mean radius"] = "big"
    frame.loc[0, "mean area"] = np.nan
    reasons = _scorer(breast_cancer).score(frame).rejects.column("reasons").to_pylist()
    assert reasons == [
        "row 0, field 'mean radius': expected a number, got text 'big'; "
        "row 0, field 'mean area': value is missing and the model was trained without"
    ]


def test_class_labels_name_the_probability_columns(wine: Trained) -> None:
    scores = _scorer(wine).score(wine.x_test.reset_index(drop=True)).scores
    labels = list(wine.pipeline.classes_)
    assert scores.column_names[-3:] == [f"probability_{label}" for label in labels]
    assert scores.column("prediction").to_pylist() == wine.pipeline.predict(wine.x_test).tolist()


def test_a_regressor_has_a_prediction_and_no_probabilities(diabetes: Trained) -> None:
    scores = _scorer(diabetes).score(diabetes.x_test.reset_index(drop=True)).scores
    assert scores.column_names[-1] == "prediction"
    np.testing.assert_array_equal(scores.column("prediction").to_numpy(), diabetes.pipeline.predict(diabetes.x_test))


def test_a_chunk_of_nothing_but_rejects_has_typed_empty_scores(breast_cancer: Trained) -> None:
    frame = breast_cancer.x_test.iloc[:3].reset_index(drop=True)
    frame["mean area"] = np.nan
    chunk = _scorer(breast_cancer).score(frame)
    assert (chunk.scores.num_rows, chunk.rejected) == (0, 3)
    assert str(chunk.scores.schema.field("prediction").type) == "int64"


def test_an_id_column_may_not_clash_with_an_output_column(breast_cancer: Trained) -> None:
    with pytest.raises(defaults.UsageError, match="clash"):
        _scorer(breast_cancer, id_column="prediction")


def test_a_chunk_checked_ahead_scores_as_one_checked_in_place(breast_cancer: Trained) -> None:
    scorer = _scorer(breast_cancer, id_column="patient")
    frame = _with_problems(breast_cancer.x_test)
    moment = datetime(2025, 3, 1, tzinfo=UTC)
    ahead = scorer.score(frame, first_row=40, scored_at=moment, checked=scorer.check(frame))
    in_place = scorer.score(frame, first_row=40, scored_at=moment)
    assert ahead.scores.equals(in_place.scores)
    assert ahead.rejects.equals(in_place.rejects)
    assert ahead.counted == in_place.counted


def test_chunks_of_any_size_carry_the_model_on_every_row(breast_cancer: Trained) -> None:
    scorer = _scorer(breast_cancer)
    frame = breast_cancer.x_test.reset_index(drop=True)
    first = 0
    for size in (50, 120, 7, 120, 0):
        scores = scorer.score(frame.iloc[:size].reset_index(drop=True), first_row=first).scores
        assert scores.column("model_version").to_pylist() == ["v1"] * size
        assert scores.column("bundle_digest").to_pylist() == [breast_cancer.bundle.digest] * size
        assert scores.column("request_id").to_pylist() == [f"{RUN_ID}-{first + row}" for row in range(size)]
        first += size


# What a run reports


def test_the_summary_is_one_line_of_json_with_the_counts() -> None:
    summary = batch.Summary(
        run_id=RUN_ID,
        model_version="v1",
        digest="sha256:abc",
        input="in.csv",
        output="out.csv",
        rejects="out.rejects.csv",
        rows_read=1000,
        rows_scored=990,
        rows_rejected=10,
        seconds=2.0,
        published=True,
    )
    line = summary.as_json()
    assert "\n" not in line
    document = json.loads(line)
    assert document["rowsRead"] == 1000
    assert document["rowsScored"] == 990
    assert document["rowsRejected"] == 10
    assert document["rowsPerSecond"] == 500.0
    assert (document["modelVersion"], document["digest"]) == ("v1", "sha256:abc")
    assert (document["output"], document["rejects"]) == ("out.csv", "out.rejects.csv")


# The command line


def test_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.predict(["batch", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for code, meaning in [
        (0, "scored"),
        (1, "runtime failure"),
        (2, "usage error"),
        (3, "rejected"),
        (4, "bundle refused"),
    ]:
        assert f"  {code}  {meaning}" in text
    for flag in ["--bundle", "--input-table", "--output-format", "--rejects", "--id-column", "--if-exists"]:
        assert flag in text


def test_a_missing_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.predict(["batch", "--input", "rows.csv"])
    assert exit_.value.code == defaults.EXIT_USAGE
    assert "--output" in capsys.readouterr().err


def test_an_unknown_format_is_a_usage_error_before_anything_is_read(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.predict(["batch", "--input", "rows.txt", "--output", "scores.csv"]) == defaults.EXIT_USAGE
    assert "--input-format" in capsys.readouterr().err


def test_a_rejects_table_needs_a_database(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.predict(["batch", "--input", "rows.csv", "--output", "scores.csv", "--rejects-table", "bad"])
    assert code == defaults.EXIT_USAGE
    assert "--rejects" in capsys.readouterr().err
