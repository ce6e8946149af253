"""The real operator on a real API server, each ModelDeployment driven as its users drive it (Git for spec, kubectl
steward for commands): a release moves through its stages with kubectl steward, abort and retry, pause and resume, a
spec change mid-release restarts it, rollbacks switch back at once, a batch challenger scores in shadow before it
takes over, and Git never sees drift."""

from __future__ import annotations

import copy
from typing import Any

from tests.support.deployments import example, version
from tests.support.waiting import wait_until


def test_a_release_moves_through_every_stage_with_kubectl_steward(deploy: Any) -> None:
    prices = deploy(example("full.yaml"))
    prices.wait("Stable")
    prices.apply(version(prices.manifest, "2024-08-01", "sha256:" + "1" * 64))
    prices.wait("Validating", incumbent=100, challenger=0, shadow=0)
    assert prices.services() == ["house-prices--2024-07-15", "house-prices--2024-08-01"]
    assert prices.route_weights() == [100, 0]
    assert prices.mirror_percent() is None
    (challenger,) = [s for s in prices.of_kind("InferenceService") if s["metadata"]["name"].endswith("08-01")]
    environment = {e["name"]: e["value"] for e in challenger["spec"]["predictor"]["containers"][0]["env"]}
    assert environment["STEWARD_BUNDLE_DIGEST"] == "sha256:" + "1" * 64
    prices.assert_git_sees_no_drift()

    prices.steward("promote")
    prices.wait("Shadowing", shadow=25)
    assert prices.mirror_percent() == 25
    assert prices.route_weights() == [100, 0]
    prices.assert_git_sees_no_drift()

    for weight in (5, 25, 50, 75):
        result = prices.steward("promote")
        assert "Canary" in result.stdout
        prices.wait("Canary", incumbent=100 - weight, challenger=weight, shadow=0)
        assert prices.route_weights() == [100 - weight, weight]
        assert prices.mirror_percent() is None
        prices.assert_git_sees_no_drift()

    shown = prices.steward("status").stdout
    assert "Canary, step 4 of 4" in shown
    assert "incumbent 25%, challenger 75%" in shown
    assert "https://runbooks.example.com/models/house-prices" in shown

    prices.steward("promote")
    status = prices.wait("Promoted", incumbent=100, challenger=0)
    assert status["incumbent"]["version"] == "2024-08-01"
    assert "challenger" not in status
    wait_until(lambda: prices.services() == ["house-prices--2024-08-01"])
    assert prices.route_weights() == [100]
    assert [(h["version"], h["outcome"]) for h in status["history"]] == [
        ("2024-07-15", "replaced"),
        ("2024-08-01", "serving"),
    ]
    assert {"ReleaseStarted", "Advanced", "TrafficShifted", "Promoted"} <= set(prices.reasons())
    history = prices.steward("history").stdout
    assert history.index("2024-08-01") < history.index("2024-07-15")
    prices.assert_git_sees_no_drift()


def test_abort_rolls_back_and_retry_releases_again(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    churn.apply(version(churn.manifest, "2024-07-01"))
    churn.wait("Validating")
    churn.steward("promote")
    churn.wait("Canary", challenger=5)

    churn.steward("abort")
    status = churn.wait("RolledBack", incumbent=100, challenger=0)
    assert status["rolledBack"]["version"] == "2024-07-01"
    stalled = {c["type"]: c for c in status["conditions"]}["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "RolledBack")
    wait_until(lambda: churn.services() == ["churn--2024-06-01"])
    assert churn.route_weights() == [100]
    churn.assert_git_sees_no_drift()

    refused = churn.steward("promote", check=False)
    assert refused.returncode == 1
    assert "no release is in progress" in refused.stderr

    churn.steward("retry")
    status = churn.wait("Validating")
    assert status["challenger"]["version"] == "2024-07-01"
    assert "rolledBack" not in status


def test_reapplying_a_recent_version_switches_back_at_once(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    original = copy.deepcopy(churn.manifest)
    churn.wait("Stable")
    churn.apply(version(churn.manifest, "2024-07-01"))
    churn.wait("Validating")
    churn.steward("promote", "--full")
    churn.wait("Promoted")

    churn.apply(original)  # git revert
    status = churn.wait("RolledBack", incumbent=100, challenger=0)
    wait_until(lambda: churn.status().get("incumbent", {}).get("version") == "2024-06-01")
    status = churn.status()
    assert "challenger" not in status
    assert [(h["version"], h["outcome"]) for h in status["history"]] == [
        ("2024-06-01", "replaced"),
        ("2024-07-01", "rolledBack"),
        ("2024-06-01", "serving"),
    ]
    reasons = churn.reasons()
    assert reasons.count("ReleaseStarted") == 1  # No new release for the known-good version.
    assert "RollingBack" in reasons
    wait_until(lambda: churn.services() == ["churn--2024-06-01"])
    assert {c["type"]: c["status"] for c in churn.status()["conditions"]}["Ready"] == "True"
    churn.assert_git_sees_no_drift()


def test_kubectl_steward_rollback_switches_to_the_previous_version(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    churn.apply(version(churn.manifest, "2024-07-01"))
    churn.wait("Validating")
    churn.steward("promote", "--full")
    churn.wait("Promoted")

    churn.steward("rollback")
    wait_until(lambda: churn.status().get("incumbent", {}).get("version") == "2024-06-01")
    status = churn.wait("RolledBack", incumbent=100)
    assert status["rolledBack"]["version"] == "2024-07-01"
    # Git still names 2024-07-01: Steward says so rather than release it again behind the user's back.
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Stalled"] == "RolledBack"
    churn.assert_git_sees_no_drift()
    assert churn.steward("rollback", "--to", "1999-01-01", check=False).returncode == 1


def test_a_spec_change_during_a_release_restarts_it_for_the_new_version(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    churn.apply(version(churn.manifest, "2024-07-01"))
    churn.wait("Validating")
    churn.steward("promote")
    churn.wait("Canary", challenger=5)
    churn.apply(version(churn.manifest, "2024-08-01"))
    status = churn.wait("Validating", incumbent=100, challenger=0)
    assert status["challenger"]["version"] == "2024-08-01"
    wait_until(lambda: churn.services() == ["churn--2024-06-01", "churn--2024-08-01"])
    assert "ReleaseRestarted" in churn.reasons()


def test_a_batch_challenger_scores_in_shadow_before_it_takes_over(deploy: Any) -> None:
    credit = deploy(example("batch.yaml"))
    credit.wait("Stable")
    credit.apply(version(credit.manifest, "v13"))
    credit.wait("Validating")
    jobs = {job["metadata"]["name"]: job for job in credit.of_kind("CronJob")}
    # From Validating on, its runs compare it with the incumbent: what the release is judged on.
    arguments = jobs["credit-limits--v13"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert arguments[arguments.index("--compare-with") + 1] == "s3://models/credit-limits/v12/"
    credit.steward("promote")
    credit.wait("Shadowing", shadow=100)
    shadow = next(job for job in credit.of_kind("CronJob") if job["metadata"]["name"] == "credit-limits--v13")
    assert shadow["spec"]["suspend"] is False
    arguments = shadow["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert arguments[arguments.index("--output") + 1] == "s3://scores/credit-limits.shadow-v13/"
    credit.steward("promote")
    credit.wait("Promoted")
    wait_until(lambda: [job["metadata"]["name"] for job in credit.of_kind("CronJob")] == ["credit-limits--v13"])
    (job,) = credit.of_kind("CronJob")
    arguments = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert arguments[arguments.index("--output") + 1] == "s3://scores/credit-limits/"
    credit.assert_git_sees_no_drift()


def test_pause_holds_a_new_version_back_until_resume(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    churn.steward("pause")
    assert churn.status()["paused"] is True
    churn.apply(version(churn.manifest, "2024-07-01"))

    def held() -> dict[str, Any] | None:
        status = churn.status()
        reconciling = {c["type"]: c for c in status.get("conditions", [])}.get("Reconciling", {})
        return status if reconciling.get("reason") == "Paused" else None

    status = wait_until(held)
    assert status["phase"] == "Stable"
    assert "challenger" not in status
    assert churn.services() == ["churn--2024-06-01"]
    assert "paused" in churn.steward("status").stdout
    churn.steward("resume")
    status = churn.wait("Validating")
    assert status["challenger"]["version"] == "2024-07-01"
