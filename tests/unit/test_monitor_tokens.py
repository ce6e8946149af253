"""Predictor tokens: one per ModelDeployment, derived from the monitor's ingest key, and told apart from anything
forged. The harness (and the operator) carry their own copy of the derivation: it must agree with the monitor's."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from steward_harness.monitors import Monitor
from steward_monitor.tokens import IngestKey, predictor_token

KEY = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL"


def test_a_token_names_its_model_and_carries_the_hmac_of_it() -> None:
    digest = hmac.new(KEY.encode(), b"team-a/churn", hashlib.sha256).hexdigest()
    assert predictor_token(KEY, "team-a", "churn") == f"team-a/churn/{digest}"
    assert predictor_token(KEY, "team-a", "churn") != predictor_token(KEY, "team-a", "fraud")
    assert predictor_token(KEY, "team-a", "churn") != predictor_token(KEY + "x", "team-a", "churn")


def test_the_harness_derives_the_same_tokens() -> None:
    monitor = Monitor("sqlite://", ingest_key=KEY)
    for namespace, model in (("team-a", "churn"), ("ml", "diagnosis"), ("", "m")):
        assert monitor.predictor_token(namespace, model) == predictor_token(KEY, namespace, model)


def test_a_valid_token_gives_its_scope() -> None:
    key = IngestKey(f"  {KEY}\n")  # As a mounted file may hold it.
    assert key.scope(f"Bearer {predictor_token(KEY, 'team-a', 'churn')}") == ("team-a", "churn")
    assert key.scope(f"Bearer {predictor_token(KEY, 'team-a', 'churn')}") == ("team-a", "churn")  # Remembered.


@pytest.mark.parametrize(
    "header",
    [
        "",
        predictor_token(KEY, "team-a", "churn"),  # Not a bearer token.
        f"Basic {predictor_token(KEY, 'team-a', 'churn')}",
        f"Bearer {predictor_token('another key', 'team-a', 'churn')}",
        "Bearer team-a/churn/" + "0" * 64,
        f"Bearer {predictor_token(KEY, 'team-a', 'churn')[:-1]}",
        f"Bearer {predictor_token(KEY, 'team-a', 'churn').replace('churn', 'fraud', 1)}",
        f"Bearer x/{predictor_token(KEY, 'team-a', 'churn')}",
        "Bearer team-a/churn",
        "Bearer ",
        "Bearer \u00e9/\u00e9/\u00e9",
    ],
    ids=[
        "none",
        "no scheme",
        "basic",
        "other key",
        "zeros",
        "cut",
        "other model",
        "extra part",
        "no digest",
        "empty",
        "not ascii",
    ],
)
def test_anything_else_gives_no_scope(header: str) -> None:
    assert IngestKey(KEY).scope(header) is None


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="the ingest key is empty"):
        IngestKey(" \n")
