"""`steward-predict batch` end to end on real CSV and Parquet files, a real SQLite file and a real PostgreSQL
server: the scores are the pipeline's, bad rows are rejected with reasons, and nothing half-written is ever
published, whether the run fails, is refused or is killed."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import threadpoolctl

from steward_predictor import bundles, cli, defaults
from tests.support import models
from tests.support.models import Trained

STEWARD_PREDICT = Path(sys.executable).with_name("steward-predict")
PLACES = ["csv", "parquet", "sqlite", "postgres"]
# Input rows with problems (see _with_problems): 2 and 5 are rejected, 7 is scored and counted.
REJECTED = [2, 5]


@dataclass(frozen=True)
class Place:
    """Where a test keeps its input and output: a directory of CSV or Parquet files, or a database."""

    kind: str
    directory: Path
    url: str | None = None
    prefix: str = ""
    """Table names start with it, so that tests sharing the session's PostgreSQL never meet."""

    def args(self, role: str, name: str) -> list[str]:
        if self.url is None:
            return [f"--{role}", str(self.path(name))]
        return [f"--{role}", self.url, f"--{role}-table", self.prefix + name]

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.{self.kind}"

    def rejects(self, name: str) -> str:
        """The name the rejects of output `name` get by default."""
        return f"{name}.rejects" if self.url is None else f"{name}_rejects"

    def write(self, frame: pd.DataFrame, name: str) -> None:
        if self.kind == "csv":
            frame.to_csv(self.path(name), index=False)
        elif self.kind == "parquet":
            frame.to_parquet(self.path(name), index=False)
        else:
            with self._engine() as engine:
                frame.to_sql(self.prefix + name, engine, index=False)

    def read(self, name: str) -> pd.DataFrame:
        if self.kind == "csv":
            # Floats are written exactly; pandas' default parser is off by an ULP or so, round_trip is not.
            return pd.read_csv(self.path(name), dtype={"patient": str}, float_precision="round_trip")
        if self.kind == "parquet":
            return pd.read_parquet(self.path(name))
        with self._engine() as engine, engine.connect() as connection:
            table = sa.Table(self.prefix + name, sa.MetaData(), autoload_with=connection)
            result = connection.execute(sa.select(table))
            return pd.DataFrame(result.all(), columns=list(result.keys()))

    def exists(self, name: str) -> bool:
        if self.url is None:
            return self.path(name).exists()
        with self._engine() as engine, engine.connect() as connection:
            return sa.inspect(connection).has_table(self.prefix + name)

    def tables(self) -> set[str]:
        """Tables of this test, or visible files, in the place."""
        if self.url is None:
            return {path.name for path in self.directory.iterdir() if not path.name.startswith(".")}
        with self._engine() as engine, engine.connect() as connection:
            return {name for name in sa.inspect(connection).get_table_names() if name.startswith(self.prefix)}

    @contextlib.contextmanager
    def _engine(self) -> Iterator[sa.Engine]:
        assert self.url is not None
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            yield engine
        finally:
            engine.dispose()


@dataclass(frozen=True)
class Run:
    code: int
    summary: dict[str, Any] | None
    stderr: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return models.breast_cancer(tmp_path_factory.mktemp("models"))


@pytest.fixture(params=PLACES)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    return _place(request, tmp_path, request.param)


def _place(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> Place:
    if kind == "sqlite":
        return Place(kind, tmp_path, url=f"sqlite:///{tmp_path / 'rows.db'}")
    if kind == "postgres":
        url: str = request.getfixturevalue("postgres")
        return Place(kind, tmp_path, url=url, prefix=f"t{uuid.uuid4().hex[:8]}_")
    return Place(kind, tmp_path)


def _with_problems(x: pd.DataFrame) -> pd.DataFrame:
    """x with a patient id, 'mean radius' stored as text (as it often is in exports) with a word in row 2,
    a value missing where training had none in row 5, and an unseen category in row 7."""
    frame = x.reset_index(drop=True)
    frame["mean radius"] = [repr(float(value)) for value in frame["mean radius"]]
    frame.loc[2, "mean radius"] = "twelve"
    frame.loc[5, "mean area"] = np.nan
    frame.loc[7, "size_band"] = "enormous"
    frame.insert(0, "patient", [f"p{index:04d}" for index in range(len(frame))])
    return frame


def _steward_predict(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Run:
    code = cli.predict(["batch", *map(str, args)])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return Run(code, json.loads(lines[-1]) if lines else None, captured.err)


def _batch(capsys: pytest.CaptureFixture[str], trained: Trained, place: Place, *extra: str) -> Run:
    return _steward_predict(
        capsys,
        "--bundle",
        trained.path,
        *place.args("input", "rows"),
        *place.args("output", "scores"),
        "--id-column",
        "patient",
        *extra,
    )


# The scores


def test_scores_equal_the_pipeline_on_the_same_rows(
    capsys: pytest.CaptureFixture[str], trained: Trained, place: Place
) -> None:
    rows = _with_problems(trained.x_test)
    place.write(rows, "rows")
    run = _batch(capsys, trained, place, "--chunk-rows", "20", "--run-id", "nightly")
    assert run.code == defaults.EXIT_OK, run.stderr
    scores = place.read("scores").sort_values("row").reset_index(drop=True)
    kept = [row for row in range(len(rows)) if row not in REJECTED]
    # The rows as the pipeline should see them: numbers as numbers, the unseen category as it was given.
    expected = rows.iloc[kept].drop(columns=["patient"]).astype({"mean radius": float})
    assert scores["row"].tolist() == kept
    assert scores["patient"].tolist() == [f"p{row:04d}" for row in kept]
    assert scores["request_id"].tolist() == [f"nightly-{row}" for row in kept]
    np.testing.assert_array_equal(scores["prediction"].to_numpy(), trained.pipeline.predict(expected))
    np.testing.assert_array_equal(
        scores[["probability_0", "probability_1"]].to_numpy(), trained.pipeline.predict_proba(expected)
    )
    assert set(scores["model_version"]) == {"v1"}
    assert set(scores["bundle_digest"]) == {trained.bundle.digest}
    assert run.summary is not None
    assert (run.summary["rowsRead"], run.summary["rowsScored"]) == (len(trained.x_test), len(kept))
    assert run.summary["published"] is True
    assert "rows/s" in run.stderr


def test_rows_with_problems_land_in_the_rejects_with_reasons_naming_the_field(
    capsys: pytest.CaptureFixture[str], trained: Trained, place: Place
) -> None:
    place.write(_with_problems(trained.x_test), "rows")
    run = _batch(capsys, trained, place, "--chunk-rows", "4")
    assert run.code == defaults.EXIT_OK, run.stderr
    rejects = place.read(place.rejects("scores")).sort_values("row").reset_index(drop=True)
    assert rejects["row"].tolist() == REJECTED
    assert rejects["patient"].tolist() == ["p0002", "p0005"]
    assert rejects.loc[0, "mean radius"] == "twelve"
    assert rejects.loc[0, "reasons"] == "row 2, field 'mean radius': expected a number, got text 'twelve'"
    assert rejects.loc[1, "reasons"] == "row 5, field 'mean area': value is missing and the model was trained without"
    assert run.summary is not None
    assert run.summary["rowsRejected"] == 2
    assert run.summary["counted"]["unseenCategory"] == 1


def test_an_input_with_no_rows_gives_outputs_with_no_rows(
    capsys: pytest.CaptureFixture[str], trained: Trained, place: Place
) -> None:
    place.write(_with_problems(trained.x_test).iloc[:0], "rows")
    run = _batch(capsys, trained, place)
    assert run.code == defaults.EXIT_OK, run.stderr
    assert len(place.read("scores")) == 0
    assert len(place.read(place.rejects("scores"))) == 0


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_text_stored_as_a_categorical_scores_as_plain_text(
    capsys: pytest.CaptureFixture[str], trained: Trained, tmp_path: Path, kind: str
) -> None:
    place = Place(kind, tmp_path)
    rows = _with_problems(trained.x_test)
    place.write(rows, "plain")
    place.write(rows.astype({"size_band": "category"}), "coded")
    runs = [
        _steward_predict(
            capsys,
            *("--bundle", trained.path, "--id-column", "patient", "--run-id", "nightly", "--chunk-rows", "20"),
            *place.args("input", name),
            *place.args("output", f"scores-{name}"),
        )
        for name in ("plain", "coded")
    ]
    assert [run.code for run in runs] == [defaults.EXIT_OK, defaults.EXIT_OK]
    plain, coded = (place.read(f"scores-{name}").drop(columns=["scored_at"]) for name in ("plain", "coded"))
    pd.testing.assert_frame_equal(coded, plain)
    pd.testing.assert_frame_equal(place.read("scores-coded.rejects"), place.read("scores-plain.rejects"))


def test_rows_are_scored_with_one_blas_thread(
    capsys: pytest.CaptureFixture[str], trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = Place("parquet", tmp_path)
    place.write(_with_problems(trained.x_test), "rows")
    threads: list[int] = []
    predict = bundles.Bundle.predict

    def counting(bundle: bundles.Bundle, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        threads.extend(pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas")
        return predict(bundle, frame)

    monkeypatch.setattr(bundles.Bundle, "predict", counting)
    assert _batch(capsys, trained, place).code == defaults.EXIT_OK
    assert threads
    assert set(threads) == {1}


# Failing safely


def test_too_many_rejects_exit_3_and_publish_only_the_rejects(
    capsys: pytest.CaptureFixture[str], trained: Trained, place: Place
) -> None:
    place.write(_with_problems(trained.x_test), "rows")
    run = _batch(capsys, trained, place, "--max-reject-fraction", "0.01")
    assert run.code == defaults.EXIT_REJECTED, run.stderr
    assert "more than --max-reject-fraction 0.01" in run.stderr
    assert not place.exists("scores")
    assert place.read(place.rejects("scores"))["row"].sort_values().tolist() == REJECTED
    assert run.summary is not None
    assert run.summary["published"] is False


def test_an_input_without_a_column_the_model_needs_is_rejected_whole(
    capsys: pytest.CaptureFixture[str], trained: Trained, place: Place
) -> None:
    place.write(_with_problems(trained.x_test).drop(columns=["mean area"]), "rows")
    run = _batch(capsys, trained, place)
    assert run.code == defaults.EXIT_REJECTED
    assert "has no column 'mean area'" in run.stderr
    assert not place.exists("scores")


def test_existing_output_is_refused_and_left_untouched(
    capsys: pytest.CaptureFixture[str], trained: Trained, place: Place
) -> None:
    place.write(_with_problems(trained.x_test), "rows")
    earlier = pd.DataFrame({"row": [0], "note": ["earlier run"]})
    place.write(earlier, "scores")
    run = _batch(capsys, trained, place)
    assert run.code == defaults.EXIT_USAGE
    assert "already exists" in run.stderr
    assert "--if-exists" in run.stderr
    pd.testing.assert_frame_equal(place.read("scores"), earlier, check_dtype=False)
    assert not place.exists(place.rejects("scores"))


def test_if_exists_replace_and_append(capsys: pytest.CaptureFixture[str], trained: Trained, place: Place) -> None:
    place.write(_with_problems(trained.x_test), "rows")
    scored = len(trained.x_test) - len(REJECTED)
    assert _batch(capsys, trained, place).code == defaults.EXIT_OK
    assert _batch(capsys, trained, place, "--if-exists", "replace").code == defaults.EXIT_OK
    assert len(place.read("scores")) == scored
    assert len(place.read(place.rejects("scores"))) == len(REJECTED)
    run = _batch(capsys, trained, place, "--if-exists", "append")
    assert run.code == defaults.EXIT_OK, run.stderr
    assert len(place.read("scores")) == 2 * scored
    assert len(place.read(place.rejects("scores"))) == 2 * len(REJECTED)


@pytest.mark.parametrize("kind", ["csv", "sqlite", "postgres"])
def test_a_run_killed_midway_leaves_no_output(
    request: pytest.FixtureRequest, trained: Trained, tmp_path: Path, kind: str
) -> None:
    place = _place(request, tmp_path, kind)
    many = trained.x_test.sample(n=20_000, replace=True, random_state=0).reset_index(drop=True)
    many.insert(0, "patient", [f"p{index}" for index in range(len(many))])
    place.write(many, "rows")
    before = place.tables()
    command = [
        str(STEWARD_PREDICT),
        "batch",
        "--bundle",
        str(trained.path),
        *place.args("input", "rows"),
        *place.args("output", "scores"),
        "--chunk-rows",
        "50",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "rows/s" in line:
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"the run was not killed mid-way: {''.join(seen)}"
    assert not place.exists("scores")
    assert not place.exists(place.rejects("scores"))
    assert place.tables() == before


def test_a_terminated_run_exits_1_and_leaves_nothing_behind(trained: Trained, tmp_path: Path) -> None:
    place = Place("csv", tmp_path)
    many = trained.x_test.sample(n=20_000, replace=True, random_state=0).reset_index(drop=True)
    place.write(many, "rows")
    command = [
        str(STEWARD_PREDICT),
        *("batch", "--bundle", str(trained.path), "--chunk-rows", "50"),
        *place.args("input", "rows"),
        *place.args("output", "scores"),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        for line in process.stderr:
            if "rows/s" in line:
                # What Kubernetes sends a Job's pod that is deleted or preempted.
                process.send_signal(signal.SIGTERM)
                break
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == defaults.EXIT_FAILED
    assert "interrupted; nothing was published" in stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rows.csv"]


# Refusing a bundle


def test_a_tampered_bundle_is_refused_with_exit_4(
    capsys: pytest.CaptureFixture[str], trained: Trained, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(trained.path, bundle)
    with (bundle / "schema.json").open("a") as schema:
        schema.write(" ")
    place = Place("csv", tmp_path)
    place.write(_with_problems(trained.x_test), "rows")
    run = _steward_predict(capsys, "--bundle", bundle, *place.args("input", "rows"), *place.args("output", "scores"))
    assert run.code == defaults.EXIT_REFUSED
    assert "schema.json does not match its digest" in run.stderr
    assert not place.exists("scores")


def test_a_bundle_with_another_digest_than_pinned_is_refused(
    capsys: pytest.CaptureFixture[str], trained: Trained, tmp_path: Path
) -> None:
    place = Place("csv", tmp_path)
    place.write(_with_problems(trained.x_test), "rows")
    pinned = "sha256:" + "0" * 64
    run = _steward_predict(
        capsys,
        *("--bundle", trained.path, "--digest", pinned),
        *place.args("input", "rows"),
        *place.args("output", "scores"),
    )
    assert run.code == defaults.EXIT_REFUSED
    assert f"but {pinned} was expected" in run.stderr


def test_a_bundle_whose_golden_examples_no_longer_reproduce_is_refused(
    capsys: pytest.CaptureFixture[str], trained: Trained, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(trained.path, bundle)
    golden = json.loads((bundle / "golden.json").read_text())
    golden["predictions"][0] = 1 - golden["predictions"][0]
    (bundle / "golden.json").write_text(json.dumps(golden))
    # Sealed again: the digest is consistent, only the behaviour differs from what training recorded.
    files = bundles.file_digests(bundle)
    manifest = {"format": bundles.FORMAT, "files": files, "digest": bundles.manifest_digest(files)}
    (bundle / bundles.MANIFEST).write_text(json.dumps(manifest))
    place = Place("csv", tmp_path)
    place.write(_with_problems(trained.x_test), "rows")
    run = _steward_predict(capsys, "--bundle", bundle, *place.args("input", "rows"), *place.args("output", "scores"))
    assert run.code == defaults.EXIT_REFUSED
    assert "golden example 0: prediction" in run.stderr
    assert not place.exists("scores")


# The console script


def test_the_console_script_documents_its_exit_codes() -> None:
    finished = subprocess.run(
        [str(STEWARD_PREDICT), "batch", "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert finished.returncode == 0
    assert "exit codes:" in finished.stdout
    assert "4  bundle refused" in finished.stdout
