"""A version counts as ready only once something answers for it. KServe's Standard (raw Deployment) mode keeps an
InferenceService Ready while its Deployment has no pod left, so there the predictor Service's endpoints decide."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from steward_operator.kinds import ENDPOINT_SLICE, Kind
from steward_operator.reconciling import SERVICE_NAME, ready_versions, serving_endpoints


def _service(version: str, *, mode: str | None = "Standard", ready: str = "True") -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": ready}]}
    if mode is not None:
        status["deploymentMode"] = mode
    return {
        "kind": "InferenceService",
        "metadata": {"name": f"churn--{version}", "generation": 1, "labels": {"steward.dev/version": version}},
        "status": status,
    }


def _slice(service: str, *readiness: bool | None) -> dict[str, Any]:
    endpoints = [
        {"addresses": ["10.0.0.1"], "conditions": {} if ready is None else {"ready": ready}} for ready in readiness
    ]
    return {"metadata": {"labels": {SERVICE_NAME: service}}, "endpoints": endpoints}


class Cluster:
    """Lists EndpointSlices, and records what was asked."""

    def __init__(self, slices: list[dict[str, Any]]) -> None:
        self.slices = slices
        self.asked: list[tuple[Kind, str | None, str]] = []

    async def list(self, kind: Kind, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        self.asked.append((kind, namespace, selector))
        return self.slices


def _endpoints(children: list[dict[str, Any]], slices: list[dict[str, Any]]) -> tuple[frozenset[str], Cluster]:
    cluster = Cluster(slices)
    return asyncio.run(serving_endpoints(cluster, "ml", children)), cluster  # type: ignore[arg-type]


def test_a_standard_mode_service_without_a_ready_endpoint_is_not_ready() -> None:
    children = [_service("v1"), _service("v2")]
    endpoints, cluster = _endpoints(
        children, [_slice("churn--v1-predictor", True), _slice("churn--v2-predictor", False)]
    )
    assert endpoints == {"churn--v1-predictor"}
    assert cluster.asked == [(ENDPOINT_SLICE, "ml", f"{SERVICE_NAME} in (churn--v1-predictor,churn--v2-predictor)")]
    # KServe says both are Ready; only v1 has a pod that answers.
    assert ready_versions(children, endpoints) == {"v1"}
    assert ready_versions(children, endpoints, current=False) == {"v1"}


@pytest.mark.parametrize(
    ("mode", "ready", "readiness", "answers"),
    [
        ("Standard", "Unknown", (True,), True),
        ("Standard", "Unknown", (False,), False),
        (None, "Unknown", (True,), False),
        ("Standard", "False", (True,), False),
    ],
    ids=["rolling-old-pod-answers", "rolling-no-pod-answers", "rolling-serverless", "not-ready"],
)
def test_a_rolling_deployment_answers_through_its_old_pods(
    mode: str | None, ready: str, readiness: tuple[bool, ...], answers: bool
) -> None:
    """KServe reads a Standard-mode Deployment that rolls (a pinned digest, a changed spec) as Ready unknown until
    its new pods are up; its old pods answer on, and a release keeps the version's traffic on them."""
    children = [_service("v2", mode=mode, ready=ready)]
    endpoints, _ = _endpoints(children, [_slice("churn--v2-predictor", *readiness)])
    assert ready_versions(children, endpoints) == frozenset()
    assert ready_versions(children, endpoints, current=False) == ({"v2"} if answers else set())


@pytest.mark.parametrize(
    ("readiness", "answers"),
    [((None,), True), ((False, True), True), ((False, False), False), ((), False)],
    ids=["condition-unset-means-ready", "one-of-two", "none-of-two", "no-endpoints"],
)
def test_any_ready_endpoint_is_enough(readiness: tuple[bool | None, ...], answers: bool) -> None:
    children = [_service("v2")]
    endpoints, _ = _endpoints(children, [_slice("churn--v2-predictor", *readiness)])
    assert ready_versions(children, endpoints) == ({"v2"} if answers else set())


@pytest.mark.parametrize(
    ("conditions", "answers"),
    [
        ({"ready": False, "serving": True, "terminating": True}, True),
        ({"ready": False, "serving": False, "terminating": True}, False),
        ({"ready": True, "serving": True}, True),
    ],
    ids=["terminating-still-serving", "terminating-done", "ready"],
)
def test_an_endpoint_that_still_serves_counts_as_gateways_count_it(conditions: dict[str, bool], answers: bool) -> None:
    # The old pod of a rollout (a digest pin changes the pod template) answers until it exits.
    children = [_service("v2")]
    found = {"metadata": {"labels": {SERVICE_NAME: "churn--v2-predictor"}}, "endpoints": [{"conditions": conditions}]}
    endpoints, _ = _endpoints(children, [found])
    assert ready_versions(children, endpoints) == ({"v2"} if answers else set())


def test_the_legacy_raw_deployment_mode_is_checked_too() -> None:
    children = [_service("v2", mode="RawDeployment")]
    assert ready_versions(children, frozenset()) == set()


def test_other_modes_keep_kserve_s_word_and_list_nothing() -> None:
    # Knative's readiness follows its pods; an InferenceService not reconciled yet has no mode.
    children = [_service("v1", mode="Knative"), _service("v2", mode=None)]
    endpoints, cluster = _endpoints(children, [])
    assert (endpoints, cluster.asked) == (frozenset(), [])
    assert ready_versions(children, endpoints) == {"v1", "v2"}


def test_an_endpoint_never_makes_a_service_kserve_calls_unready_ready() -> None:
    children = [_service("v2", ready="False")]
    assert ready_versions(children, frozenset({"churn--v2-predictor"})) == set()
