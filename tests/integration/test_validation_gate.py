"""The validation gate end to end, short of the operator: real predictors publish their bundles' held-out
results, a real Prometheus scrapes them, the Prometheus provider reads them, and the decision engine lets a
challenger as good as the incumbent through and turns a worse one back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from steward_harness.predictors import Predictor
from steward_harness.prometheus import Prometheus as PrometheusServer
from steward_operator import deciding, specs, validation
from steward_operator.evidence import HeldOutResults, metric_provider
from tests.support import models


@pytest.fixture
def prometheus() -> Iterator[PrometheusServer]:
    server = PrometheusServer()
    yield server
    server.stop()


def test_a_challenger_is_judged_on_its_held_out_results(prometheus: PrometheusServer, tmp_path: Path) -> None:
    bundles = {
        "v1": models.breast_cancer(tmp_path, "v1", c=1.0),
        "v2": models.breast_cancer(tmp_path, "v2", c=1.0),  # Retrained the same way: as good.
        "v3": models.breast_cancer(tmp_path, "v3", c=1e-4),  # Regularised into poor probabilities.
    }
    predictors = {version: Predictor(str(model.path), name="churn") for version, model in bundles.items()}
    try:
        for predictor in predictors.values():
            predictor.start()
            assert predictor.ready()[0], predictor.tail()
            prometheus.add_target(predictor.url.removeprefix("http://"))
        prometheus.start()
        for predictor in predictors.values():
            prometheus.wait_scraped(predictor.url.removeprefix("http://"))
        provider = metric_provider("prometheus", prometheus.url)
        now = datetime.now(UTC)
        results = {version: asyncio.run(provider.held_out("churn", version, now)) for version in bundles}
        assert asyncio.run(provider.held_out("churn", "v9", now)) is None
    finally:
        for predictor in predictors.values():
            predictor.stop()

    for version, model in bundles.items():
        found = results[version]
        assert found is not None
        assert found.metrics["logLoss"] == pytest.approx(model.bundle.holdout["logLoss"])
        assert found.data == model.bundle.holdout["fingerprint"].removeprefix("sha256:")[:16]
        # The bundle each version's predictor loaded: what the operator pins the version to.
        assert found.digests == {model.bundle.digest}

    rollout = specs.Rollout.model_validate({"validation": {"metric": "logLoss", "tolerance": 0.05}})
    timing = deciding.Timing(now - timedelta(minutes=5), now - timedelta(minutes=5), now)

    def judge(challenger: str) -> deciding.Verdict:
        return deciding.decide(
            deciding.Policy(rollout),
            timing,
            phase="Validating",
            window=None,
            holdouts=validation.Holdouts(_held_out(results["v1"]), _held_out(results[challenger])),
        )

    good, bad = judge("v2"), judge("v3")
    assert good.decision == "advance", good.rule
    assert bad.decision == "rollback", bad.rule
    assert "same" in good.rule
    (evidence,) = bad.evidence
    assert (evidence.metric, evidence.verdict) == ("logLoss", "fail")


def _held_out(found: HeldOutResults | None) -> validation.HeldOut:
    assert found is not None
    return validation.HeldOut(found.metrics, found.data)
