"""The real operator on a real API server, each ModelDeployment driven as its users drive it (Git for spec, kubectl
steward for commands): an online model gets an InferenceService and a route, a batch model a CronJob, a streaming
model a StatefulSet of stream workers, each owned by its ModelDeployment so garbage collection removes them with it;
and a child another ModelDeployment holds is neither adopted nor overwritten."""

from __future__ import annotations

import json
import time
from typing import Any

from steward_harness.kubectl import Kubectl
from tests.support.deployments import example, version
from tests.support.waiting import wait_until


def test_an_online_model_gets_an_inference_service_and_a_route_owned_by_it(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    status = churn.wait("Stable", incumbent=100)
    uid = churn.get()["metadata"]["uid"]
    assert churn.services() == ["churn--2024-06-01"]
    for child in churn.children():
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"], owner["blockOwnerDeletion"]) == (
            "ModelDeployment",
            uid,
            True,
            True,
        )
    assert churn.route_weights() == [100]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Reconciling"]["status"] == "False"
    assert conditions["Stalled"]["status"] == "False"
    assert all(c["observedGeneration"] == 1 for c in conditions.values())
    assert status["observedGeneration"] == 1
    assert status["history"][0]["version"] == "2024-06-01"
    assert {"Deploying", "Ready"} <= set(churn.reasons())
    # No finalizer: deletion never waits for the operator, and children go with their owner.
    assert not churn.get()["metadata"].get("finalizers")
    churn.assert_git_sees_no_drift()


def test_a_batch_model_gets_a_cron_job_running_the_batch_command(deploy: Any) -> None:
    credit = deploy(example("batch.yaml"))
    credit.wait("Stable")
    (job,) = credit.of_kind("CronJob")
    assert job["metadata"]["name"] == "credit-limits--v12"
    assert job["spec"]["schedule"] == "30 2 * * *"
    assert job["spec"]["timeZone"] == "Europe/Berlin"
    assert job["spec"]["suspend"] is False
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["steward-predict"]
    assert container["args"][:3] == ["batch", "--bundle", "s3://models/credit-limits/v12/"]
    assert container["envFrom"] == [{"secretRef": {"name": "warehouse-reader"}}]
    credit.assert_git_sees_no_drift()


def test_a_streaming_model_gets_a_stateful_set_of_stream_workers(deploy: Any) -> None:
    fraud = deploy(example("streaming.yaml"))
    (workers,) = wait_until(lambda: fraud.of_kind("StatefulSet"))
    assert workers["metadata"]["labels"]["steward.dev/version"] == "3.4.0"
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["steward-predict"]
    assert container["args"][:4] == [
        "stream",
        "--model=payment-fraud",
        "--bundle=s3://models/payment-fraud/3.4.0/",
        "--version=3.4.0",
    ]
    assert "--transactional-id=payment-fraud-scorer-$(POD_NAME)" in container["args"]
    assert fraud.status()["phase"] == "Pending"  # No worker runs here: nothing serves yet.
    fraud.assert_git_sees_no_drift()


def test_deleting_a_model_deployment_lets_garbage_collection_remove_its_children(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    uid = churn.get()["metadata"]["uid"]
    children = churn.children()
    assert {child["kind"] for child in children} == {"InferenceService", "HTTPRoute"}
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == uid
    # Nothing (no finalizer of Steward's) holds the deletion up.
    churn.cluster.run("delete", "modeldeployment", churn.name, "-n", churn.namespace, "--wait=true", "--timeout=10s")
    # Kubernetes' garbage collector removes every child that names the deleted owner...
    wait_until(lambda: not churn.children())
    # ...and the operator brings nothing back for a deleted ModelDeployment.
    time.sleep(2)
    assert not churn.children()


def test_model_deployments_whose_names_and_versions_join_alike_get_children_of_their_own(deploy: Any) -> None:
    first = version({**example("online.yaml"), "metadata": {"name": "case1"}}, "v1-0")
    second = version({**example("online.yaml"), "metadata": {"name": "case1-v1"}}, "0")
    case1, case1_v1 = deploy(first), deploy(second)
    case1.wait("Stable", incumbent=100)
    case1_v1.wait("Stable", incumbent=100)

    assert case1.services() == ["case1--v1-0"]
    assert case1_v1.services() == ["case1-v1--0"]
    generations = {child["metadata"]["name"]: child["metadata"]["generation"] for child in case1.children()}
    time.sleep(12)  # Two resyncs of each: a fight over a child would have rewritten it by now.
    assert {child["metadata"]["name"]: child["metadata"]["generation"] for child in case1.children()} == generations


def test_a_child_someone_else_holds_is_neither_adopted_nor_overwritten(deploy: Any, cluster: Kubectl) -> None:
    other = deploy({**example("online.yaml"), "metadata": {"name": "other"}})
    other.wait("Stable", incumbent=100)
    squatter = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "case2--v1",
            "namespace": other.namespace,
            "ownerReferences": [
                {
                    "apiVersion": "steward.dev/v1alpha1",
                    "kind": "ModelDeployment",
                    "name": "other",
                    "uid": other.get()["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "theirs:1"}]}},
    }
    cluster.run("apply", "-f", "-", stdin=json.dumps(squatter))
    before = cluster.json("get", "inferenceservice", "case2--v1", "-n", other.namespace)

    case2 = deploy(version({**example("online.yaml"), "metadata": {"name": "case2"}}, "v1"))

    def stalled() -> dict[str, Any] | None:
        conditions = {c["type"]: c for c in case2.status().get("conditions", [])}
        return conditions.get("Stalled") if conditions.get("Stalled", {}).get("status") == "True" else None

    condition = wait_until(stalled)
    assert condition["reason"] == "ChildOwnedElsewhere"
    assert "InferenceService case2--v1 already exists and belongs to ModelDeployment other" in condition["message"]
    assert "ChildOwnedElsewhere" in wait_until(
        lambda: case2.reasons() if "ChildOwnedElsewhere" in case2.reasons() else None
    )
    time.sleep(6)  # A resync later, still untouched, and told only once.
    assert case2.reasons().count("ChildOwnedElsewhere") == 1
    assert wait_until(stalled)["lastTransitionTime"] == condition["lastTransitionTime"]
    after = cluster.json("get", "inferenceservice", "case2--v1", "-n", other.namespace)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"]["ownerReferences"] == before["metadata"]["ownerReferences"]
    assert after["spec"] == before["spec"]

    # Once the name is free, the ModelDeployment takes it and serves.
    cluster.run("delete", "inferenceservice", "case2--v1", "-n", other.namespace)
    case2.wait("Stable", incumbent=100)
    assert case2.services() == ["case2--v1"]
