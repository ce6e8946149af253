"""Batch scoring on object storage, on fsspec's in-memory filesystem: which URLs name files and prefixes, how the
parts of a prefix are read, and how output is staged beside its target, moved into place only when the run
succeeded, and cleaned up when it did not."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions  # type: ignore[import-untyped]
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from steward_predictor import batch, datasets, defaults, locations, writers
from steward_predictor.scoring import Scorer
from tests.support import models
from tests.support.models import Trained

RUN = "nightly"
STAGING = f"{writers.STAGING_PREFIX}{RUN}"


@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return models.breast_cancer(tmp_path_factory.mktemp("models"))


@pytest.fixture
def bucket() -> str:
    return f"bucket-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def memory(bucket: str) -> Iterator[Any]:
    """The in-memory filesystem, whose store the whole process shares: the test keeps to its own bucket, which
    is emptied afterwards."""
    filesystem = fsspec.filesystem("memory")
    yield filesystem
    if filesystem.exists(f"/{bucket}"):
        filesystem.rm(f"/{bucket}", recursive=True)


def _keys(memory: Any, bucket: str) -> list[str]:
    """Every key in the bucket, relative to it."""
    return sorted(key.removeprefix(f"/{bucket}/") for key in memory.find(f"/{bucket}"))


def _put_csv(memory: Any, key: str, frame: pd.DataFrame) -> None:
    memory.pipe_file(key, frame.to_csv(index=False).encode())


def _put_parquet(memory: Any, key: str, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    memory.pipe_file(key, buffer.getvalue())


def _read_parquet(memory: Any, bucket: str, name: str) -> pd.DataFrame:
    """A Parquet object, or the parts under a prefix in name order, as one frame."""
    keys = [key for key in _keys(memory, bucket) if key == name or key.startswith(f"{name}/part-")]
    return pd.concat([pd.read_parquet(io.BytesIO(memory.cat_file(f"/{bucket}/{key}"))) for key in keys])


def _writer(bucket: str, name: str, if_exists: defaults.IfExists = "fail") -> writers.ObjectWriter:
    return writers.ObjectWriter(locations.locate(f"memory://{bucket}/{name}", "parquet", role="output"), if_exists, RUN)


def _chunk(rows: range) -> pa.Table:
    return pa.table({"row": pa.array(list(rows), pa.int64()), "prediction": pa.array([row % 2 for row in rows])})


# Which URLs name files and prefixes


@pytest.mark.parametrize(
    ("uri", "format", "expected", "prefix"),
    [
        ("s3://scores/limits.parquet", None, "parquet", False),
        ("s3://scores/limits/", "parquet", "parquet", True),
        ("s3://scores/limits.csv/", None, "csv", True),
        ("ftp://files.example.com/out/limits.csv", None, "csv", False),
        ("memory://scores/limits", "csv", "csv", False),
    ],
)
def test_urls_of_filesystems_fsspec_knows_name_objects_and_prefixes(
    uri: str, format: defaults.Format | None, expected: defaults.Format, prefix: bool
) -> None:
    location = locations.locate(uri, format, role="output")
    assert (location.format, location.remote, location.prefix) == (expected, True, prefix)
    assert location.display == uri


@pytest.mark.parametrize(
    ("uri", "format", "role", "message"),
    [
        ("s3://scores/limits/", None, "output", "cannot tell the format.*--output-format csv or parquet"),
        ("s3://scores/", "parquet", "output", "not the bucket itself"),
        ("s3://scores", "csv", "rejects", "not the bucket itself"),
        ("s3://scores/rows.csv", None, "input", None),
        ("s3://scores/", "parquet", "input", None),
    ],
)
def test_a_prefix_needs_a_format_and_output_a_key_inside_the_bucket(
    uri: str, format: defaults.Format | None, role: str, message: str | None
) -> None:
    if message is None:
        assert locations.locate(uri, format, role=role).remote
        return
    with pytest.raises(locations.LocationError, match=message):
        locations.locate(uri, format, role=role)


def test_a_filesystem_whose_package_is_missing_is_named_before_anything_is_read() -> None:
    try:
        fsspec.get_filesystem_class("gs")
    except ImportError:
        pass
    else:
        pytest.skip("gcsfs is installed")
    with pytest.raises(locations.LocationError, match=r"^--input gs://scores/rows\.csv: .*install gcsfs"):
        locations.locate("gs://scores/rows.csv")


def test_a_table_goes_with_a_database_not_with_an_object() -> None:
    with pytest.raises(locations.LocationError, match="only with a database URL"):
        locations.locate("s3://scores/limits.parquet", table="limits")


@pytest.mark.parametrize(
    ("output", "rejects"),
    [
        ("s3://scores/credit-limits/", "s3://scores/credit-limits.rejects/"),
        ("s3://scores/daily/limits.parquet", "s3://scores/daily/limits.rejects.parquet"),
        ("s3://scores/limits.parquet/", "s3://scores/limits.rejects.parquet/"),
    ],
)
def test_rejects_go_beside_an_object_or_prefix_never_inside(output: str, rejects: str) -> None:
    location = locations.rejects_beside(locations.locate(output, "parquet", role="output"))
    assert (location.uri, location.format) == (rejects, "parquet")


def test_an_object_and_the_prefix_of_the_same_name_are_the_same_place(tmp_path: Path) -> None:
    prefix = locations.locate("s3://scores/limits/", "parquet")
    assert prefix.same_as(locations.locate("s3://scores/limits", "parquet"))
    assert not prefix.same_as(locations.locate("s3://scores/limits.rejects/", "parquet"))
    assert not prefix.same_as(locations.locate(str(tmp_path / "limits.parquet")))


def test_credentials_in_a_url_are_not_displayed() -> None:
    location = locations.locate("ftp://scorer:s3cret@files.example.com/out/scores.csv", role="output")
    assert location.display == "ftp://files.example.com/out/scores.csv"


# Reading


def test_the_parts_of_a_prefix_are_read_in_name_order_skipping_markers_and_hidden_keys(
    memory: Any, bucket: str
) -> None:
    frame = pd.DataFrame({"plan": ["basic", "pro", "pro", "basic", "team"], "age": [30.5, 41.0, 52.5, 19.0, 60.0]})
    _put_csv(memory, f"/{bucket}/rows/part-1.csv", frame.iloc[3:])
    _put_csv(memory, f"/{bucket}/rows/part-0.csv", frame.iloc[:3])
    _put_csv(memory, f"/{bucket}/rows/part-2.csv", frame.iloc[:0])
    memory.pipe_file(f"/{bucket}/rows/_SUCCESS", b"")
    memory.pipe_file(f"/{bucket}/rows/.part-3.csv.crc", b"\x00")
    location = locations.locate(f"memory://{bucket}/rows/", "csv")
    with datasets.Transaction() as transaction:
        assert transaction.exists(location)
        assert transaction.columns(location) == ["plan", "age"]
        assert transaction.count(location) is None
        chunks = list(
            transaction.read(location, ["plan", "age"], chunk_rows=2, prepare=lambda chunk: chunk, numbers=["age"])
        )
    # Chunks never span two parts, and the empty part gives none.
    assert [len(chunk) for chunk in chunks] == [2, 1, 2]
    read = pd.concat(chunks, ignore_index=True)
    assert read["plan"].tolist() == frame["plan"].tolist()
    assert read["age"].tolist() == frame["age"].tolist()


def test_parquet_parts_are_counted_from_their_metadata_and_read_as_one_input(memory: Any, bucket: str) -> None:
    frame = pd.DataFrame({"plan": ["basic", "pro", "team", "pro"], "age": [30.5, 41.0, 52.5, 19.0]})
    _put_parquet(memory, f"/{bucket}/rows.parquet/part-0.parquet", frame.iloc[:1])
    _put_parquet(memory, f"/{bucket}/rows.parquet/part-1.parquet", frame.iloc[1:])
    location = locations.locate(f"memory://{bucket}/rows.parquet/")
    with datasets.Transaction() as transaction:
        assert transaction.count(location) == 4
        chunks = list(
            transaction.read(location, ["plan", "age"], chunk_rows=10, prepare=lambda chunk: chunk, categories=["plan"])
        )
    assert [len(chunk) for chunk in chunks] == [1, 3]
    assert pd.concat(chunks)["plan"].astype(str).tolist() == frame["plan"].tolist()


def test_an_input_with_no_rows_anywhere_still_has_its_columns(memory: Any, bucket: str) -> None:
    _put_csv(memory, f"/{bucket}/rows/part-0.csv", pd.DataFrame({"plan": [], "age": []}))
    location = locations.locate(f"memory://{bucket}/rows/", "csv")
    with datasets.Transaction() as transaction:
        (chunk,) = transaction.read(location, ["plan", "age"], chunk_rows=2, prepare=lambda chunk: chunk)
    assert (len(chunk), list(chunk.columns)) == (0, ["plan", "age"])


def test_a_missing_object_or_an_empty_prefix_is_named_in_a_dataset_error(memory: Any, bucket: str) -> None:
    memory.pipe_file(f"/{bucket}/empty/_SUCCESS", b"")
    with datasets.Transaction() as transaction:
        assert not transaction.exists(locations.locate(f"memory://{bucket}/rows.csv"))
        with pytest.raises(locations.DatasetError, match=f"^memory://{bucket}/rows.csv does not exist$"):
            transaction.columns(locations.locate(f"memory://{bucket}/rows.csv"))
        with pytest.raises(locations.DatasetError, match=f"memory://{bucket}/rows/ does not exist"):
            transaction.columns(locations.locate(f"memory://{bucket}/rows/", "csv"))
        with pytest.raises(locations.DatasetError, match="holds no files to read"):
            transaction.columns(locations.locate(f"memory://{bucket}/empty/", "csv"))


def test_what_the_storage_client_raises_is_a_one_line_dataset_error() -> None:
    location = locations.locate("s3://scores/limits/", "parquet", role="output")
    with (
        pytest.raises(locations.DatasetError, match=r"^cannot write s3://scores/limits/: Unable to locate") as raised,
        locations.file_errors(location, writing=True),
    ):
        raise botocore.exceptions.NoCredentialsError
    assert "AWS_ACCESS_KEY_ID" in str(raised.value)
    assert "credentialsSecret" in str(raised.value)
    with (
        pytest.raises(locations.DatasetError, match=r"^s3://scores/rows\.csv does not exist \(The specified bucket"),
        locations.file_errors(locations.locate("s3://scores/rows.csv")),
    ):
        raise FileNotFoundError("The specified bucket does not exist")
    # Anything else is a bug, not a location's problem: it is not dressed up as one.
    with pytest.raises(RuntimeError), locations.file_errors(location):
        raise RuntimeError("a bug")


# Writing


def test_output_is_staged_beside_the_target_and_moved_into_place_when_published(memory: Any, bucket: str) -> None:
    writer = _writer(bucket, "scores.parquet")
    writer.write(_chunk(range(3)))
    writer.write(_chunk(range(3, 5)))
    writer._wait()
    assert _keys(memory, bucket) == [f"{STAGING}/scores.parquet"]
    writer.publish()
    assert _keys(memory, bucket) == ["scores.parquet"]
    assert _read_parquet(memory, bucket, "scores.parquet")["row"].tolist() == list(range(5))


def test_a_prefix_gets_parts_of_bounded_size_and_success_last(
    memory: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writers, "PART_BYTES", 1)
    writer = _writer(bucket, "scores/")
    for start in range(0, 9, 3):
        writer.write(_chunk(range(start, start + 3)))
    writer._wait()
    parts = [f"part-{index:05d}-{RUN}.parquet" for index in range(3)]
    assert _keys(memory, bucket) == [f"{STAGING}/scores/{part}" for part in parts]
    writer.publish()
    assert _keys(memory, bucket) == [f"scores/{name}" for name in ["_SUCCESS", *parts]]
    assert _read_parquet(memory, bucket, "scores")["row"].tolist() == list(range(9))


@pytest.mark.parametrize("name", ["scores.parquet", "scores/"])
def test_a_failed_run_deletes_its_staged_keys_and_leaves_the_target_as_it_was(
    memory: Any, bucket: str, name: str
) -> None:
    old = f"{name}part-0.parquet" if name.endswith("/") else name
    _put_parquet(memory, f"/{bucket}/{old}", _chunk(range(1)).to_pandas())
    writer = _writer(bucket, name, "replace")
    writer.write(_chunk(range(3)))
    writer._wait()
    writer.discard()
    assert _keys(memory, bucket) == [old]


def test_a_failed_chunk_fails_the_write_and_the_run_cleans_up(memory: Any, bucket: str) -> None:
    location = locations.locate(f"memory://{bucket}/scores/", "parquet", role="output")
    with datasets.Transaction(RUN) as transaction:
        writer = transaction.writer(location, "fail")
        writer.write(_chunk(range(3)))
        writer.write(pa.table({"other": [1]}))
        with pytest.raises(locations.DatasetError, match=f"memory://{bucket}/scores/: columns"):
            writer.publish()
    assert _keys(memory, bucket) == []


def test_if_exists_fail_leaves_output_that_appeared_while_scoring(memory: Any, bucket: str) -> None:
    for name, key in [("scores.parquet", "scores.parquet"), ("scores/", "scores/part-0.parquet")]:
        location = locations.locate(f"memory://{bucket}/{name}", "parquet", role="output")
        with datasets.Transaction(RUN) as transaction:
            writer = transaction.writer(location, "fail")
            writer.write(_chunk(range(3)))
            memory.pipe_file(f"/{bucket}/{key}", b"someone else's")
            with pytest.raises(locations.DatasetError, match="appeared while scoring; it was left as it is"):
                writer.publish()
        assert memory.cat_file(f"/{bucket}/{key}") == b"someone else's"
        assert STAGING not in " ".join(_keys(memory, bucket))


def test_replacing_a_prefix_removes_the_old_parts_and_nothing_beside_it(memory: Any, bucket: str) -> None:
    for key in ["scores/part-00000-earlier.parquet", "scores/nested/part-0.parquet", "scores/_SUCCESS"]:
        _put_parquet(memory, f"/{bucket}/{key}", _chunk(range(100, 101)).to_pandas())
    _put_parquet(memory, f"/{bucket}/scores.rejects/part-0.parquet", _chunk(range(1)).to_pandas())
    writer = _writer(bucket, "scores/", "replace")
    writer.write(_chunk(range(2)))
    writer.publish()
    assert _keys(memory, bucket) == [
        "scores.rejects/part-0.parquet",
        "scores/_SUCCESS",
        f"scores/part-00000-{RUN}.parquet",
    ]
    assert _read_parquet(memory, bucket, "scores")["row"].tolist() == [0, 1]


def test_appending_adds_parts_to_a_prefix_and_rows_to_an_object(memory: Any, bucket: str) -> None:
    _put_parquet(memory, f"/{bucket}/scores/part-00000-earlier.parquet", _chunk(range(2)).to_pandas())
    _put_parquet(memory, f"/{bucket}/scores.parquet", _chunk(range(2)).to_pandas())
    memory.pipe_file(f"/{bucket}/scores.csv", b"row,prediction\n0,0\n1,1")
    csv = writers.ObjectWriter(locations.locate(f"memory://{bucket}/scores.csv", role="output"), "append", RUN)
    for writer in [_writer(bucket, "scores/", "append"), _writer(bucket, "scores.parquet", "append"), csv]:
        writer.write(_chunk(range(2, 4)))
        writer.publish()
    assert [key for key in _keys(memory, bucket) if key.startswith("scores/")] == [
        "scores/_SUCCESS",
        "scores/part-00000-earlier.parquet",
        f"scores/part-00000-{RUN}.parquet",
    ]
    assert sorted(_read_parquet(memory, bucket, "scores")["row"]) == [0, 1, 2, 3]
    assert _read_parquet(memory, bucket, "scores.parquet")["row"].tolist() == [0, 1, 2, 3]
    assert memory.cat_file(f"/{bucket}/scores.csv") == b"row,prediction\n0,0\n1,1\n2,0\n3,1\n"


def test_appending_again_with_the_same_run_id_is_refused(memory: Any, bucket: str) -> None:
    first = _writer(bucket, "scores/", "append")
    first.write(_chunk(range(2)))
    first.publish()
    again = _writer(bucket, "scores/", "append")
    again.write(_chunk(range(2)))
    with pytest.raises(locations.DatasetError, match="same --run-id"):
        again.publish()
    again.discard()
    assert _keys(memory, bucket) == ["scores/_SUCCESS", f"scores/part-00000-{RUN}.parquet"]


def test_a_copy_that_fails_midway_puts_the_prefix_back_as_it_was(
    memory: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = ["scores/_SUCCESS", "scores/part-00000-earlier.parquet"]
    for key in before:
        memory.pipe_file(f"/{bucket}/{key}", b"earlier")
    monkeypatch.setattr(writers, "PART_BYTES", 1)
    copy = MemoryFileSystem.cp_file
    copies: list[str] = []

    def refused_second(self: MemoryFileSystem, path1: str, path2: str, **kwargs: Any) -> None:
        copies.append(path2)
        if len(copies) == 2:
            raise PermissionError("Access Denied")
        copy(self, path1, path2, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "cp_file", refused_second)
    location = locations.locate(f"memory://{bucket}/scores/", "parquet", role="output")
    with datasets.Transaction(RUN) as transaction:
        writer = transaction.writer(location, "replace")
        for start in range(0, 9, 3):
            writer.write(_chunk(range(start, start + 3)))
        with pytest.raises(locations.DatasetError, match=f"^cannot write memory://{bucket}/scores/: Access Denied$"):
            writer.publish()
    assert _keys(memory, bucket) == before
    assert memory.cat_file(f"/{bucket}/scores/_SUCCESS") == b""


def test_old_parts_that_cannot_be_deleted_after_the_copy_are_reported_as_such(
    memory: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory.pipe_file(f"/{bucket}/scores/part-00000-earlier.parquet", b"earlier")
    remove = MemoryFileSystem.rm

    def refused_for_the_old(self: MemoryFileSystem, path: str | list[str], *args: Any, **kwargs: Any) -> None:
        if "earlier" in str(path):
            raise PermissionError("Access Denied")
        remove(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "rm", refused_for_the_old)
    location = locations.locate(f"memory://{bucket}/scores/", "parquet", role="output")
    with datasets.Transaction(RUN) as transaction:
        writer = transaction.writer(location, "replace")
        writer.write(_chunk(range(3)))
        with pytest.raises(locations.PublishingError, match=f"holds the new parts \\(part-\\*-{RUN}\\.\\*\\)"):
            writer.publish()
    assert _keys(memory, bucket) == ["scores/part-00000-earlier.parquet", f"scores/part-00000-{RUN}.parquet"]


def test_a_write_the_store_refuses_is_known_before_any_row_is_scored(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(self: MemoryFileSystem, path: str, *args: Any, **kwargs: Any) -> None:
        raise PermissionError("Access Denied")

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", refused)
    with pytest.raises(locations.DatasetError, match=f"^cannot write memory://{bucket}/scores/: Access Denied$"):
        _writer(bucket, "scores/")


# A whole run


def _rows(trained: Trained) -> pd.DataFrame:
    frame = trained.x_test.reset_index(drop=True).astype({"mean radius": object})
    frame.loc[2, "mean radius"] = "twelve"
    frame.insert(0, "patient", [f"p{index:04d}" for index in range(len(frame))])
    return frame


def _run(bucket: str, trained: Trained, stopping: threading.Event | None = None, **settings: Any) -> batch.Summary:
    output = locations.locate(f"memory://{bucket}/scores/", "parquet", role="output")
    run = batch.Run(
        input=locations.locate(f"memory://{bucket}/rows/", "csv"),
        output=output,
        rejects=locations.rejects_beside(output),
        id_column="patient",
        chunk_rows=25,
        run_id=RUN,
        **settings,
    )
    with datasets.Transaction(run.run_id) as transaction:
        columns = batch.prepare(transaction, run)
        scorer = Scorer(trained.bundle)
        return batch.score_batch(transaction, run, scorer, columns, progress=io.StringIO(), stopping=stopping)


def test_a_run_scores_csv_parts_into_parquet_parts_and_rejects_beside(
    memory: Any, bucket: str, breast_cancer: Trained
) -> None:
    rows = _rows(breast_cancer)
    _put_csv(memory, f"/{bucket}/rows/part-0.csv", rows.iloc[:60])
    _put_csv(memory, f"/{bucket}/rows/part-1.csv", rows.iloc[60:])
    summary = _run(bucket, breast_cancer)
    assert (summary.rows_read, summary.rows_rejected, summary.published) == (len(rows), 1, True)
    assert summary.output == f"memory://{bucket}/scores/"
    assert _keys(memory, bucket) == [
        "rows/part-0.csv",
        "rows/part-1.csv",
        "scores.rejects/_SUCCESS",
        f"scores.rejects/part-00000-{RUN}.parquet",
        "scores/_SUCCESS",
        f"scores/part-00000-{RUN}.parquet",
    ]
    scores = _read_parquet(memory, bucket, "scores")
    kept = [row for row in range(len(rows)) if row != 2]
    assert scores["row"].tolist() == kept
    expected = breast_cancer.pipeline.predict(rows.iloc[kept].drop(columns=["patient"]).astype({"mean radius": float}))
    np.testing.assert_array_equal(scores["prediction"].to_numpy(), expected)
    assert _read_parquet(memory, bucket, "scores.rejects")["patient"].tolist() == ["p0002"]
    with pytest.raises(locations.LocationError, match="already exists"):
        _run(bucket, breast_cancer)


def test_a_run_with_too_many_rejects_publishes_only_the_rejects(
    memory: Any, bucket: str, breast_cancer: Trained
) -> None:
    rows = _rows(breast_cancer)
    _put_csv(memory, f"/{bucket}/rows/part-0.csv", rows)
    with pytest.raises(batch.RejectedError):
        _run(bucket, breast_cancer, max_reject_fraction=0.0)
    assert _keys(memory, bucket) == [
        "rows/part-0.csv",
        "scores.rejects/_SUCCESS",
        f"scores.rejects/part-00000-{RUN}.parquet",
    ]


def test_a_run_asked_to_stop_stops_at_the_next_chunk_and_leaves_nothing(
    memory: Any, bucket: str, breast_cancer: Trained
) -> None:
    rows = _rows(breast_cancer)
    _put_csv(memory, f"/{bucket}/rows/part-0.csv", rows)
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(KeyboardInterrupt):
        _run(bucket, breast_cancer, stopping=stopping)
    assert _keys(memory, bucket) == ["rows/part-0.csv"]
