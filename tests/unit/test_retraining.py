"""Retraining decisions as pure data: which trigger starts the team's Job, the Job itself, one at a time, the
cooldown, and runs followed to their end (or adopted when status never recorded them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from steward_operator import planners, specs
from steward_operator.children import Owner
from steward_operator.evidence.base import Quality
from steward_operator.modes import Live, Release
from steward_operator.retraining import Job, Signals, quality_drop, step
from tests.conftest import REPOSITORY

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SERVING_SINCE = NOW - timedelta(days=30)


def _spec(**retraining: Any) -> specs.ModelDeploymentSpec:
    """examples/full.yaml (maxAge 2160h, onDrift, onQualityDrop 0.1, cooldown 72h), with changes."""
    manifest = yaml.safe_load((REPOSITORY / "examples" / "full.yaml").read_text())
    manifest["spec"]["retraining"].update(retraining)
    return specs.ModelDeploymentSpec.model_validate(manifest["spec"])


def _status(**changes: Any) -> specs.ModelDeploymentStatus:
    serving = specs.HistoryEntry(version="v7", bundle="s3://models/v7/", started=SERVING_SINCE)
    base = specs.ModelDeploymentStatus(
        phase="Stable",
        incumbent=specs.ServedVersion(version="v7", bundle="s3://models/v7/", since=SERVING_SINCE),
        history=[serving],
    )
    return base.model_copy(update=changes)


def _owner(spec: specs.ModelDeploymentSpec) -> Owner:
    return Owner(name="house-prices", namespace="pricing", uid="uid-1", traffic=spec.rollout.traffic)


def _manual(by: str = "ana") -> specs.Operation:
    return specs.Operation(action="retrain", requested_at=NOW, requested_by=by)


def test_a_manual_request_starts_the_teams_job_with_the_trigger_in_it() -> None:
    spec = _spec()
    outcome = step(_owner(spec), spec, _status(operation=_manual()), Signals(), NOW)
    job = outcome.job
    assert job is not None
    metadata = job["metadata"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert metadata["name"] == "house-prices-retrain-20261125-120000"
    assert metadata["ownerReferences"][0]["uid"] == "uid-1"
    assert metadata["labels"] == {
        "app.kubernetes.io/managed-by": "steward",
        "app.kubernetes.io/name": "house-prices-training",
        "steward.dev/model": "house-prices",
        "steward.dev/retraining": "manual",
    }
    assert metadata["annotations"]["steward.dev/retrain-reason"] == "manual"
    assert metadata["annotations"]["steward.dev/retrain-version"] == "v7"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    environment = {item["name"]: item["value"] for item in container["env"]}
    assert environment["STEWARD_RETRAIN_REASON"] == "manual"
    assert environment["STEWARD_RETRAIN_MESSAGE"] == "requested by ana with kubectl steward retrain"
    assert (environment["STEWARD_MODEL"], environment["STEWARD_NAMESPACE"]) == ("house-prices", "pricing")
    assert environment["STEWARD_MODEL_VERSION"] == "v7"
    assert job["spec"]["backoffLimit"] == 1
    (run,) = outcome.status.retrainings
    assert (run.job, run.reason, run.version, run.outcome, run.started) == (
        metadata["name"],
        "manual",
        "v7",
        "running",
        NOW,
    )
    operation = outcome.status.operation
    assert operation is not None
    assert (operation.handled_at, operation.result) == (NOW, "a retraining Job starts")
    assert [decision.reason for decision in outcome.decisions] == ["RetrainingStarted"]


def test_never_two_at_once_not_even_on_request() -> None:
    spec = _spec()
    started = step(_owner(spec), spec, _status(operation=_manual()), Signals(), NOW)
    assert started.job is not None
    running = {started.job["metadata"]["name"]: Job("running", "manual", "", "v7", NOW)}
    again = started.status.model_copy(update={"operation": _manual("bo")})
    refused = step(_owner(spec), spec, again, Signals(drifting=("age",), jobs=running), NOW + timedelta(days=9))
    assert refused.job is None
    assert refused.status.operation is not None
    assert (
        refused.status.operation.result
        == f"refused: retraining Job {started.job['metadata']['name']} is still running; one runs at a time"
    )


def test_a_request_without_a_job_template_is_refused() -> None:
    spec = _spec().model_copy(update={"retraining": None})
    outcome = step(_owner(spec), spec, _status(operation=_manual()), Signals(), NOW)
    assert outcome.job is None
    assert outcome.status.operation is not None
    assert outcome.status.operation.result == "refused: spec.retraining is not set: there is no Job template to run"


def test_the_serving_version_past_its_max_age_is_retrained_then_the_cooldown_holds() -> None:
    spec = _spec(maxAge="720h", onDrift=False, onQualityDrop=None)
    young = step(_owner(spec), spec, _status(), Signals(), SERVING_SINCE + timedelta(hours=700))
    assert young.job is None
    old = step(_owner(spec), spec, _status(), Signals(), NOW + timedelta(hours=1))
    assert old.job is not None
    (run,) = old.status.retrainings
    assert run.reason == "maxAge"
    assert "longer than maxAge 720h" in run.message
    done = {run.job: Job("succeeded", "maxAge", run.message, "v7", run.started)}
    settled = step(_owner(spec), spec, old.status, Signals(jobs=done), NOW + timedelta(hours=2))
    assert settled.job is None  # Cooldown: 72h.
    assert [(item.outcome, item.finished) for item in settled.status.retrainings] == [
        ("succeeded", NOW + timedelta(hours=2))
    ]
    assert [decision.reason for decision in settled.decisions] == ["RetrainingSucceeded"]
    later = step(_owner(spec), spec, settled.status, Signals(jobs=done), NOW + timedelta(hours=74))
    assert later.job is not None  # Still serving the old version once the cooldown is over.


@pytest.mark.parametrize(
    ("signals", "reason"),
    [
        (Signals(drifting=("sqft", "__prediction__")), "drift"),
        (Signals(drifting=()), None),
        (Signals(drifting=None), None),  # Unknown is not drift.
        (Signals(quality=Quality({"mae": 23.0}, {"mae": 20.0}, labelled=500)), "qualityDrop"),
        (Signals(quality=Quality({"mae": 21.0}, {"mae": 20.0}, labelled=500)), None),  # 5 % worse, under 10 %.
        (Signals(quality=Quality({"mae": 30.0}, {"mae": 20.0}, labelled=50)), None),  # Too few matured outcomes.
    ],
)
def test_drift_and_quality_drop_trigger_only_when_the_metrics_say_so(signals: Signals, reason: str | None) -> None:
    spec = _spec(maxAge=None)
    outcome = step(_owner(spec), spec, _status(), signals, NOW)
    assert (outcome.job is not None) == (reason is not None)
    if reason is not None:
        (run,) = outcome.status.retrainings
        assert run.reason == reason
        assert outcome.job is not None
        assert outcome.job["metadata"]["annotations"]["steward.dev/retrain-message"] == run.message


def test_quality_drop_reads_each_metric_the_right_way_round() -> None:
    spec = _spec()  # monitoring.outcome: mae (lower is better), minLabels 500 in full.yaml

    def drop(target: specs.ModelDeploymentSpec, quality: Quality) -> tuple[str, float]:
        found = quality_drop(target, quality)
        assert found is not None
        return found

    assert drop(spec, Quality({"mae": 22.0}, {"mae": 20.0}, labelled=1_000))[1] == pytest.approx(0.1)
    classifier = spec.model_copy(update={"monitoring": specs.Monitoring()})
    metric, worse = drop(classifier, Quality({"rocAuc": 0.81}, {"rocAuc": 0.9}, labelled=300))
    assert metric == "rocAuc"
    assert worse == pytest.approx(0.1)
    assert drop(classifier, Quality({"rocAuc": 0.95}, {"rocAuc": 0.9}, labelled=300))[1] < 0
    assert quality_drop(classifier, Quality({}, {"rocAuc": 0.9}, labelled=300)) is None


def test_a_job_status_never_recorded_is_adopted_not_started_again() -> None:
    spec = _spec()
    found = {
        "house-prices-retrain-20261125-110000": Job(
            "running", "drift", "sustained drift", "v7", NOW - timedelta(hours=1)
        )
    }
    outcome = step(_owner(spec), spec, _status(), Signals(drifting=("sqft",), jobs=found), NOW)
    assert outcome.job is None
    (run,) = outcome.status.retrainings
    assert (run.job, run.reason, run.outcome) == ("house-prices-retrain-20261125-110000", "drift", "running")


def test_a_job_that_is_gone_counts_as_failed() -> None:
    spec = _spec()
    run = specs.RetrainingRun(job="house-prices-retrain-x", reason="manual", version="v7", started=NOW)
    outcome = step(_owner(spec), spec, _status(retrainings=[run]), Signals(), NOW + timedelta(minutes=5))
    assert [(item.outcome, item.finished) for item in outcome.status.retrainings] == [
        ("failed", NOW + timedelta(minutes=5))
    ]
    assert [(decision.reason, decision.warning) for decision in outcome.decisions] == [("RetrainingFailed", True)]


def test_a_schedule_is_a_cron_job_running_the_same_template() -> None:
    spec = _spec()
    plan = planners.plan("house-prices", "pricing", "uid-1", spec, Release(Live("v7", "s3://models/v7/")))
    (cron,) = [job for job in plan.of("CronJob") if job["metadata"]["labels"].get("steward.dev/retraining")]
    assert cron["metadata"]["name"] == "house-prices-retrain"
    assert (cron["spec"]["schedule"], cron["spec"]["concurrencyPolicy"]) == ("0 4 1 * *", "Forbid")
    template = cron["spec"]["jobTemplate"]
    assert template["metadata"]["annotations"]["steward.dev/retrain-reason"] == "schedule"
    (container,) = template["spec"]["template"]["spec"]["containers"]
    assert {"name": "STEWARD_RETRAIN_REASON", "value": "schedule"} in container["env"]
    unscheduled = _spec(schedule=None)
    plain = planners.plan("house-prices", "pricing", "uid-1", unscheduled, Release(Live("v7", "s3://models/v7/")))
    assert not any(job["metadata"]["labels"].get("steward.dev/retraining") for job in plain.of("CronJob"))


def test_the_drifting_condition_follows_the_monitor_and_keeps_its_transition_time() -> None:
    spec = _spec(onDrift=False, maxAge=None, onQualityDrop=None)

    def drifting(status: specs.ModelDeploymentStatus) -> specs.Condition:
        return next(item for item in status.conditions if item.type == "Drifting")

    steady = step(_owner(spec), spec, _status(), Signals(drifting=()), NOW).status
    assert (drifting(steady).status, drifting(steady).reason) == ("False", "NoDrift")
    drifted = step(_owner(spec), spec, steady, Signals(drifting=("sqft",)), NOW + timedelta(hours=1)).status
    assert (drifting(drifted).status, drifting(drifted).message) == ("True", "sustained drift in v7: sqft")
    assert drifting(drifted).last_transition_time == NOW + timedelta(hours=1)
    still = step(_owner(spec), spec, drifted, Signals(drifting=("sqft",)), NOW + timedelta(hours=2)).status
    assert drifting(still).last_transition_time == NOW + timedelta(hours=1)
    unknown = step(_owner(spec), spec, still, Signals(drifting=None), NOW + timedelta(hours=3)).status
    assert drifting(unknown) == drifting(still)  # Metrics unreadable: the condition stays as it was.
    assert step(_owner(spec), spec, still, Signals(drifting=("sqft",)), NOW).job is None  # onDrift is off.
