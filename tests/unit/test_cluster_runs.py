"""Which runs a batch release reads from the cluster: only finished Jobs its challenger's own CronJob made, each with
the termination message of its last pod; anything else in the namespace carrying the same labels is not evidence.
Against an API client that answers from fixed objects (the listing itself is the real client's, tested on a real
API server)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from steward_operator.evidence import MetricsUnavailableError
from steward_operator.evidence.runs import ClusterRuns, Run
from steward_operator.kinds import CRON_JOB, JOB, POD, Kind
from steward_operator.kubernetes import ApiError

SINCE = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
LABELS = {"steward.dev/model": "credit", "steward.dev/version": "v2", "steward.dev/variant": "shadow"}


def _at(minutes: int) -> str:
    return (SINCE + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owned(uid: str, name: str, owner: str | None, **body: Any) -> dict[str, Any]:
    references = [{"uid": owner, "controller": True, "kind": "Owner", "name": "x"}] if owner else []
    return {"metadata": {"uid": uid, "name": name, "labels": LABELS, "ownerReferences": references}, **body}


def _job(uid: str, owner: str | None = "schedule", finished: int | None = 10, kind: str = "Complete") -> dict[str, Any]:
    conditions = [] if finished is None else [{"type": kind, "status": "True", "lastTransitionTime": _at(finished)}]
    return _owned(uid, f"credit--v2-{uid}", owner, status={"conditions": conditions})


def _pod(uid: str, job: str, message: str, finished: int = 9) -> dict[str, Any]:
    terminated = {"exitCode": 0, "message": message, "finishedAt": _at(finished)}
    return _owned(
        uid,
        f"pod-{uid}",
        job,
        status={"containerStatuses": [{"name": "predictor", "state": {"terminated": terminated}}]},
    )


def _summary(pairs: int) -> str:
    def side(version: str) -> dict[str, Any]:
        return {"version": version, "rows": 100, "rejected": 0, "predictions": {}, "holdout": {"metrics": {}}}

    return json.dumps(
        {"comparison": {"incumbent": side("v1"), "challenger": side("v2"), "pairs": pairs, "disagreements": 0}}
    )


class Objects:
    """An API client answering from fixed objects by kind, or failing as an API server may."""

    def __init__(self, jobs: list[dict[str, Any]], pods: list[dict[str, Any]], *, fails: bool = False) -> None:
        self.found = {JOB.kind: jobs, POD.kind: pods}
        self.fails = fails

    async def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        if self.fails:
            raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request")
        assert (kind, namespace, name) == (CRON_JOB, "risk", "credit--v2")
        return {"metadata": {"uid": "schedule", "name": name}}

    async def list(self, kind: Kind, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        assert selector == "steward.dev/model=credit,steward.dev/version=v2,steward.dev/variant=shadow"
        return self.found[kind.kind]


def _runs(objects: Objects) -> list[Run]:
    return asyncio.run(ClusterRuns(objects).runs("credit", "v2", SINCE, namespace="risk"))  # type: ignore[arg-type]


def test_a_finished_run_of_the_challengers_cron_job_is_read_from_its_last_pod() -> None:
    # The Job retried once: the first pod's message is an older attempt's.
    objects = Objects(
        [_job("a")], [_pod("p1", "a", _summary(10), finished=5), _pod("p2", "a", _summary(99), finished=9)]
    )
    (run,) = _runs(objects)
    assert (run.job, run.finished, run.pairs) == ("credit--v2-a", SINCE + timedelta(minutes=10), 99)


def test_jobs_not_made_by_the_challengers_cron_job_are_no_evidence() -> None:
    jobs = [_job("forged", owner="someone-else"), _job("orphan", owner=None), _job("a")]
    pods = [_pod("p1", "forged", _summary(1_000)), _pod("p2", "orphan", _summary(1_000)), _pod("p3", "a", _summary(7))]
    assert [run.pairs for run in _runs(Objects(jobs, pods))] == [7]


def test_pods_of_another_job_are_not_a_runs_message() -> None:
    objects = Objects([_job("a")], [_pod("p1", "b", _summary(1_000)), _pod("p2", "a", _summary(7))])
    assert [run.pairs for run in _runs(objects)] == [7]


def test_runs_still_going_or_finished_before_the_stage_began_are_left_out() -> None:
    jobs = [_job("going", finished=None), _job("early", finished=-5), _job("a", finished=30), _job("b", finished=20)]
    pods = [_pod(f"p-{job}", job, _summary(index)) for index, job in enumerate(["going", "early", "a", "b"])]
    assert [run.job for run in _runs(Objects(jobs, pods))] == ["credit--v2-b", "credit--v2-a"]


def test_a_failed_job_and_an_unreadable_message_are_runs_that_say_so() -> None:
    jobs = [_job("a", kind="Failed"), _job("b")]
    refused = json.dumps({"failed": "challenger bundle refused", "error": "digest mismatch"})
    runs = _runs(Objects(jobs, [_pod("p1", "a", refused), _pod("p2", "b", "x" * 5_000)]))
    assert [(run.failed, run.error[:40]) for run in runs] == [
        ("challenger bundle refused", "digest mismatch"),
        ("unreadable", "its pod's termination message is unreada"),
    ]


def test_a_finished_job_without_a_terminated_pod_is_unreadable() -> None:
    (run,) = _runs(Objects([_job("a")], []))
    assert run.failed == "unreadable"


def test_an_api_server_that_cannot_answer_is_no_data() -> None:
    with pytest.raises(MetricsUnavailableError, match="the runs of credit v2 could not be read"):
        _runs(Objects([], [], fails=True))
