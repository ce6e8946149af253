"""Bundles on S3, through fsspec, against a real S3-compatible server (moto in server mode)."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from steward_harness.predictors import Predictor
from steward_predictor.bundles import BundleError, load_bundle
from tests.support.models import Trained


def _upload(environment: dict[str, str], bundle: Path, bucket: str, prefix: str) -> str:
    client = boto3.client(
        "s3",
        endpoint_url=environment["AWS_ENDPOINT_URL"],
        aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
        region_name=environment["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=bucket)
    for path in bundle.iterdir():
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}"


def test_a_bundle_loads_from_s3_and_is_still_checked(
    s3: dict[str, str], trained: dict[str, Trained], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    uri = _upload(s3, trained["wine"].path, "models", "wine/v1")
    bundle = load_bundle(uri, expected_digest=trained["wine"].bundle.digest)
    assert bundle.version == "v1"
    with pytest.raises(BundleError, match=r"no bundle at|not a Steward bundle"):
        load_bundle("s3://models/wine/v404")


def test_the_server_serves_a_bundle_from_s3(s3: dict[str, str], trained: dict[str, Trained]) -> None:
    uri = _upload(s3, trained["diabetes"].path, "serving", "diabetes/v1")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    with Predictor(uri, name="diabetes", env={**environment, **s3}) as predictor:
        assert predictor.ready()[0], predictor.tail()
        frame = trained["diabetes"].x_test.iloc[:3].fillna({"size_band": "medium"})
        frame = frame.fillna(frame.mean(numeric_only=True))
        status, _, body = predictor.post("/v1/models/diabetes:predict", {"instances": frame.to_dict("records")})
        assert status == 200, body
