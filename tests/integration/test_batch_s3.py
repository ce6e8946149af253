"""`steward-predict batch` reading and writing on S3, against a real S3-compatible server (moto in server mode):
CSV and Parquet input, objects and prefixes of part files as output (the example's among them), rejects beside
them, --if-exists, nothing published or left behind by a run that fails, and a one-line error for what the store
refuses."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from steward_predictor import defaults
from tests.conftest import REPOSITORY
from tests.support.models import Trained

STEWARD_PREDICT = Path(sys.executable).with_name("steward-predict")
# Input rows with problems (see _with_problems): 2 and 5 are rejected.
REJECTED = [2, 5]
STAGING = ".steward-tmp-"


@dataclass(frozen=True)
class Bucket:
    """A bucket of this test's own on the S3 server, and the environment a run needs to reach it."""

    name: str
    client: Any
    environment: dict[str, str]

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def listing(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def put_frame(self, key: str, frame: pd.DataFrame) -> None:
        if key.endswith(".csv"):
            self.put(key, frame.to_csv(index=False).encode())
            return
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.put(key, buffer.getvalue())

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        return body

    def read(self, name: str) -> pd.DataFrame:
        """An object, or the parts under a prefix in name order, as one frame."""
        keys = [key for key in self.listing() if key == name or key.startswith(f"{name}/part-")]
        assert keys, f"nothing at {name} in {self.listing()}"
        frames = [
            pd.read_csv(io.BytesIO(self.get(key)), dtype={"patient": str}, float_precision="round_trip")
            if key.endswith(".csv")
            else pd.read_parquet(io.BytesIO(self.get(key)))
            for key in keys
        ]
        return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class Run:
    code: int
    summary: dict[str, Any] | None
    stderr: str


@pytest.fixture
def bucket(s3: dict[str, str]) -> Bucket:
    """A new bucket of the test's own."""
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], **_client_credentials(s3))
    name = f"batch-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    return Bucket(name, client, _environment(s3))


def _client_credentials(s3: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": s3["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": s3["AWS_SECRET_ACCESS_KEY"],
        "region_name": s3["AWS_DEFAULT_REGION"],
    }


def _environment(s3: dict[str, str]) -> dict[str, str]:
    """A run's environment: the S3 server's, and no profile, shared credentials or instance metadata of the
    machine running the test."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    return environment | {
        **s3,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="module")
def model(trained: dict[str, Trained]) -> Trained:
    return trained["breast-cancer"]


def _with_problems(x: pd.DataFrame) -> pd.DataFrame:
    """x with a patient id, a word for a number in row 2 and a value missing where training had none in row 5."""
    frame = x.reset_index(drop=True)
    frame["mean radius"] = [repr(float(value)) for value in frame["mean radius"]]
    frame.loc[2, "mean radius"] = "twelve"
    frame.loc[5, "mean area"] = np.nan
    frame.insert(0, "patient", [f"p{index:04d}" for index in range(len(frame))])
    return frame


def _many(model: Trained, rows: int) -> pd.DataFrame:
    many = model.x_test.sample(n=rows, replace=True, random_state=0).reset_index(drop=True)
    many.insert(0, "patient", [f"p{index}" for index in range(len(many))])
    return many


def _command(model: Trained, *args: str) -> list[str]:
    return [str(STEWARD_PREDICT), "batch", "--bundle", str(model.path), *args]


def _batch(bucket: Bucket, model: Trained, *args: str, environment: dict[str, str] | None = None) -> Run:
    """The real console script, run to its end."""
    finished = subprocess.run(
        _command(model, *args),
        env=bucket.environment if environment is None else environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    lines = finished.stdout.strip().splitlines()
    return Run(finished.returncode, json.loads(lines[-1]) if lines else None, finished.stderr)


def _said_plainly(stderr: str) -> str:
    """The run's last message, after checking that every line of stderr is one of its messages: no traceback."""
    lines = stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    assert all(line.startswith("steward-predict: ") for line in lines), stderr
    return lines[-1]


def _expected(model: Trained, rows: pd.DataFrame, kept: list[int]) -> np.ndarray:
    predictions: np.ndarray = model.pipeline.predict(
        rows.iloc[kept].drop(columns=["patient"]).astype({"mean radius": float})
    )
    return predictions


# Scoring on S3


# What a run writes for each kind of output: the scores and the rejects beside them (name, keys).
WRITTEN = {
    "scores/": (
        ("scores", ["scores/_SUCCESS", "scores/part-00000-nightly.parquet"]),
        ("scores.rejects", ["scores.rejects/_SUCCESS", "scores.rejects/part-00000-nightly.parquet"]),
    ),
    "scores.parquet": (("scores.parquet", ["scores.parquet"]), ("scores.rejects.parquet", ["scores.rejects.parquet"])),
}


@pytest.mark.parametrize(("source", "output"), [("rows.csv", "scores/"), ("rows/", "scores.parquet")])
def test_csv_or_parquet_input_is_scored_into_parquet_with_the_rejects_beside(
    bucket: Bucket, model: Trained, source: str, output: str
) -> None:
    rows = _with_problems(model.x_test)
    if source == "rows.csv":
        bucket.put_frame("rows.csv", rows)
    else:
        # Parts as Spark writes them: in name order, with a marker and a checksum file to skip.
        bucket.put_frame("rows/part-00001.parquet", rows.iloc[40:])
        bucket.put_frame("rows/part-00000.parquet", rows.iloc[:40])
        bucket.put("rows/_SUCCESS", b"")
        bucket.put("rows/.part-00000.parquet.crc", b"\x00")
    inputs = bucket.listing()
    run = _batch(
        bucket,
        model,
        *("--input", bucket.url(source), "--input-format", "csv" if source.endswith(".csv") else "parquet"),
        *("--output", bucket.url(output), "--output-format", "parquet"),
        *("--id-column", "patient", "--chunk-rows", "25", "--run-id", "nightly"),
    )
    assert run.code == defaults.EXIT_OK, run.stderr
    (scores_name, scores_keys), (rejects_name, rejects_keys) = WRITTEN[output]
    # No temporary keys are left, and nothing else was written.
    assert bucket.listing() == sorted([*inputs, *scores_keys, *rejects_keys])
    scores = bucket.read(scores_name)
    kept = [row for row in range(len(rows)) if row not in REJECTED]
    assert scores["row"].tolist() == kept
    assert scores["request_id"].tolist() == [f"nightly-{row}" for row in kept]
    np.testing.assert_array_equal(scores["prediction"].to_numpy(), _expected(model, rows, kept))
    rejects = bucket.read(rejects_name)
    assert rejects["row"].tolist() == REJECTED
    assert rejects["patient"].tolist() == ["p0002", "p0005"]
    assert run.summary is not None
    assert run.summary["output"] == bucket.url(output)
    assert "rows/s" in run.stderr
    assert f"copying into place: {bucket.url(output)}" in run.stderr


def test_an_object_and_rejects_named_elsewhere_reached_through_the_s3_endpoint_variable(
    bucket: Bucket, model: Trained
) -> None:
    rows = _with_problems(model.x_test)
    bucket.put_frame("in/rows.parquet", rows)
    environment = dict(bucket.environment)
    environment["AWS_ENDPOINT_URL_S3"] = environment.pop("AWS_ENDPOINT_URL")
    run = _batch(
        bucket,
        model,
        *("--input", bucket.url("in/rows.parquet"), "--output", bucket.url("out/scores.parquet")),
        *("--rejects", bucket.url("problems/rejects.csv"), "--id-column", "patient"),
        environment=environment,
    )
    assert run.code == defaults.EXIT_OK, run.stderr
    assert bucket.listing() == ["in/rows.parquet", "out/scores.parquet", "problems/rejects.csv"]
    kept = [row for row in range(len(rows)) if row not in REJECTED]
    np.testing.assert_array_equal(bucket.read("out/scores.parquet")["prediction"], _expected(model, rows, kept))
    assert bucket.read("problems/rejects.csv")["patient"].tolist() == ["p0002", "p0005"]


def test_the_batch_examples_table_is_scored_into_its_s3_prefix(
    s3: dict[str, str], postgres: str, model: Trained
) -> None:
    """examples/batch.yaml scores a PostgreSQL table into s3://scores/credit-limits/, as its CronJob passes it."""
    batch = yaml.safe_load((REPOSITORY / "examples" / "batch.yaml").read_text())["spec"]["serving"]["batch"]
    output = batch["output"]
    bucket_name, _, prefix = output["uri"].removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], **_client_credentials(s3))
    client.create_bucket(Bucket=bucket_name)
    bucket = Bucket(bucket_name, client, _environment(s3))
    table = f"t{uuid.uuid4().hex[:8]}_{batch['input']['table']}"
    rows = _with_problems(model.x_test)
    engine = sa.create_engine(postgres, poolclass=sa.pool.NullPool)
    try:
        rows.to_sql(table, engine, index=False)
    finally:
        engine.dispose()
    for attempt in ("first", "again"):
        run = _batch(
            bucket,
            model,
            *("--input", postgres, "--input-table", table, "--input-format", "sql"),
            *("--output", output["uri"], "--output-format", output["format"]),
            *("--if-exists", "replace", "--chunk-rows", str(batch["chunkRows"]), "--run-id", attempt),
        )
        assert run.code == defaults.EXIT_OK, run.stderr
    assert bucket.listing() == [
        f"{prefix.rstrip('/')}.rejects/_SUCCESS",
        f"{prefix.rstrip('/')}.rejects/part-00000-again.parquet",
        f"{prefix}_SUCCESS",
        f"{prefix}part-00000-again.parquet",
    ]
    assert len(bucket.read(prefix.rstrip("/"))) == len(rows) - len(REJECTED)


# --if-exists


def test_if_exists_fail_refuses_an_existing_output_and_leaves_it(bucket: Bucket, model: Trained) -> None:
    bucket.put_frame("rows.csv", _with_problems(model.x_test))
    bucket.put("scores/part-00000-earlier.parquet", b"earlier")
    before = bucket.listing()
    run = _batch(
        bucket,
        model,
        *("--input", bucket.url("rows.csv"), "--output", bucket.url("scores/"), "--output-format", "parquet"),
    )
    assert run.code == defaults.EXIT_USAGE, run.stderr
    message = _said_plainly(run.stderr)
    assert f"{bucket.url('scores/')} already exists" in message
    assert "--if-exists" in message
    assert bucket.listing() == before
    assert bucket.get("scores/part-00000-earlier.parquet") == b"earlier"


def test_if_exists_replace_replaces_a_prefix_whole_and_append_adds_parts(bucket: Bucket, model: Trained) -> None:
    rows = _with_problems(model.x_test)
    bucket.put_frame("rows.csv", rows)
    scored = len(rows) - len(REJECTED)

    def scoring(run_id: str, *extra: str) -> Run:
        return _batch(
            bucket,
            model,
            *("--input", bucket.url("rows.csv"), "--output", bucket.url("scores/"), "--output-format", "parquet"),
            *("--run-id", run_id, *extra),
        )

    assert scoring("first").code == defaults.EXIT_OK
    run = scoring("second", "--if-exists", "replace")
    assert run.code == defaults.EXIT_OK, run.stderr
    assert bucket.listing() == [
        "rows.csv",
        "scores.rejects/_SUCCESS",
        "scores.rejects/part-00000-second.parquet",
        "scores/_SUCCESS",
        "scores/part-00000-second.parquet",
    ]
    run = scoring("third", "--if-exists", "append")
    assert run.code == defaults.EXIT_OK, run.stderr
    assert len(bucket.read("scores")) == 2 * scored
    assert len(bucket.read("scores.rejects")) == 2 * len(REJECTED)
    assert set(bucket.read("scores")["request_id"].str.partition("-")[0]) == {"second", "third"}


# Failing safely


def test_a_run_that_fails_midway_leaves_the_output_as_it_was_and_no_temporary_keys(
    bucket: Bucket, model: Trained
) -> None:
    bucket.put_frame("rows/part-0.csv", _many(model, 5_000))
    # A second part without the model's columns: the run fails once the first part is scored.
    bucket.put("rows/part-1.csv", b"patient,note\np1,unrelated\n")
    bucket.put("scores/part-00000-earlier.parquet", b"earlier")
    bucket.put("scores/_SUCCESS", b"")
    before = bucket.listing()
    run = _batch(
        bucket,
        model,
        *("--input", bucket.url("rows/"), "--input-format", "csv"),
        *("--output", bucket.url("scores/"), "--output-format", "parquet", "--if-exists", "replace"),
        *("--chunk-rows", "500"),
    )
    assert run.code == defaults.EXIT_FAILED, run.stderr
    assert "5,000 rows read" in run.stderr
    message = _said_plainly(run.stderr)
    assert message.startswith(f"steward-predict: failed: {bucket.url('rows/part-1.csv')}: ")
    assert message.endswith("nothing was published")
    assert bucket.listing() == before
    assert bucket.get("scores/part-00000-earlier.parquet") == b"earlier"


def test_a_terminated_run_deletes_the_keys_it_staged(bucket: Bucket, model: Trained) -> None:
    bucket.put_frame("rows.csv", _many(model, 20_000))
    command = _command(
        model,
        *("--input", bucket.url("rows.csv"), "--output", bucket.url("scores/"), "--output-format", "parquet"),
        *("--chunk-rows", "50", "--run-id", "doomed"),
    )
    with subprocess.Popen(
        command, env=bucket.environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stderr is not None
        for line in process.stderr:
            if "rows/s" in line:
                staged = [key for key in bucket.listing() if key.startswith(f"{STAGING}doomed/")]
                # What Kubernetes sends a Job's pod that is deleted or preempted.
                process.send_signal(signal.SIGTERM)
                break
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == defaults.EXIT_FAILED, stderr
    assert "interrupted; nothing was published" in stderr
    assert staged, "the run staged nothing beside its output"
    assert bucket.listing() == ["rows.csv"]


# What the store refuses


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing bucket", "{url} does not exist (The specified bucket does not exist)"),
        ("missing key", "{url} does not exist"),
        ("no credentials", "{url}: Unable to locate credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ("refused write", "cannot write {url}: The specified bucket does not exist"),
    ],
)
def test_what_the_store_refuses_is_one_line_naming_the_url(
    bucket: Bucket, model: Trained, case: str, message: str
) -> None:
    bucket.put_frame("rows.csv", _with_problems(model.x_test))
    source, output, environment = bucket.url("rows.csv"), bucket.url("scores.parquet"), bucket.environment
    if case == "missing bucket":
        source = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/rows.csv"
    elif case == "missing key":
        source = bucket.url("absent.csv")
    elif case == "no credentials":
        environment = {
            key: value
            for key, value in environment.items()
            if key not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        }
    else:
        output = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/scores.parquet"
    run = _batch(bucket, model, "--input", source, "--output", output, environment=environment)
    assert run.code == defaults.EXIT_FAILED, run.stderr
    url = output if case == "refused write" else source
    said = _said_plainly(run.stderr)
    assert said.startswith(f"steward-predict: failed: {message.format(url=url)}"), said
    assert said.endswith("; nothing was published")
    assert bucket.listing() == ["rows.csv"]
