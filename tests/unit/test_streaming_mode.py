"""Streaming as a serving mode: one StatefulSet of stream workers per ModelDeployment, whose flags carry the live
versions and the split between them, and whose readiness is its workers'."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from steward_operator import modes, planners, specs
from steward_operator.modes import Live, Release
from steward_operator.reconciling import ready_versions
from tests.conftest import REPOSITORY

V1 = Live("3.4.0", "s3://models/payment-fraud/3.4.0/", "sha256:" + "1" * 64)
V2 = Live("3.5.0", "s3://models/payment-fraud/3.5.0/")


def _spec(**streaming: Any) -> specs.ModelDeploymentSpec:
    manifest = yaml.safe_load((REPOSITORY / "examples" / "streaming.yaml").read_text())
    manifest["spec"]["serving"]["streaming"].update(streaming)
    return specs.ModelDeploymentSpec.model_validate(manifest["spec"])


def _workers(release: Release, **streaming: Any) -> dict[str, Any]:
    plan = planners.plan("payment-fraud", "tns", "uid-8", _spec(**streaming), release)
    (workers,) = plan.serving
    return workers


def _flags(workers: dict[str, Any]) -> dict[str, str]:
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["steward-predict"]
    assert container["args"][0] == "stream"
    return dict(arg.removeprefix("--").partition("=")[::2] for arg in container["args"][1:])


def test_the_workers_score_the_input_into_the_output_under_one_group_with_a_stable_id_each() -> None:
    workers = _workers(Release(V1), replicas=3, deadLetterTopic="fraud.dead")
    flags = _flags(workers)
    assert workers["kind"] == "StatefulSet"
    assert workers["spec"]["replicas"] == 3
    assert (flags["bundle"], flags["version"], flags["digest"]) == (V1.bundle, V1.version, V1.digest)
    assert flags["brokers"] == "kafka-0.kafka.svc:9092,kafka-1.kafka.svc:9092"
    assert (flags["input-topic"], flags["output-topic"], flags["dead-letter-topic"]) == (
        "payments",
        "payment-fraud-scores",
        "fraud.dead",
    )
    assert flags["group"] == "payment-fraud-scorer"
    # Kubernetes puts the pod's name (its ordinal) in: the same id every time that worker starts.
    assert flags["transactional-id"] == "payment-fraud-scorer-$(POD_NAME)"
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    # The monitor judges the workers' drift by the ModelDeployment's thresholds and window, as an online model's.
    assert {"name": "STEWARD_DRIFT_SECONDS", "value": "3600"} in container["env"]
    assert "challenger-bundle" not in flags
    assert workers["metadata"]["labels"]["steward.dev/version"] == V1.version
    assert workers["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_defaults_name_the_group_and_the_dead_letters() -> None:
    manifest = yaml.safe_load((REPOSITORY / "examples" / "streaming.yaml").read_text())
    for name in ("consumerGroup", "deadLetterTopic"):
        del manifest["spec"]["serving"]["streaming"][name]
    spec = specs.ModelDeploymentSpec.model_validate(manifest["spec"])
    (workers,) = planners.plan("payment-fraud", "tns", "uid-8", spec, Release(V1)).serving
    flags = _flags(workers)
    assert flags["group"] == "steward-tns-payment-fraud"
    assert flags["dead-letter-topic"] == "payment-fraud-scores.dead-letter"
    assert (flags["max-records"], flags["commit-interval-ms"], flags["dead-letter-ceiling"]) == ("500", "100", "0.5")


@pytest.mark.parametrize(
    ("release", "share", "shadow"),
    [(Release(V1, V2), None, False), (Release(V1, V2, 0, 100), None, True), (Release(V1, V2, 25), "25", False)],
)
def test_a_release_puts_the_challenger_and_its_share_or_shadow_in_the_flags(
    release: Release, share: str | None, shadow: bool
) -> None:
    workers = _workers(release)
    flags = _flags(workers)
    assert (flags["challenger-bundle"], flags["challenger-version"]) == (V2.bundle, V2.version)
    assert flags.get("challenger-percent") == share
    assert ("shadow" in flags) is shadow
    assert workers["metadata"]["labels"]["steward.dev/challenger"] == V2.version


def test_a_client_secret_is_mounted_and_named_to_the_workers() -> None:
    workers = _workers(Release(V1), clientSecret={"name": "kafka-client"})
    pod = workers["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "kafka-client", "secret": {"secretName": "kafka-client"}}]
    assert _flags(workers)["client-config"] == "/etc/steward/kafka/client.properties"


def test_a_claims_bundles_are_read_from_the_claim_mounted_once_beside_the_client_secret() -> None:
    v1, v2 = Live("v1", "pvc://models/fraud/v1"), Live("v2", "pvc://models/fraud/v2/")
    workers = _workers(Release(v1, v2, challenger_weight=10), clientSecret={"name": "kafka-client"})
    pod = workers["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    claim = {"name": "bundles-0", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    assert pod["volumes"] == [claim, {"name": "kafka-client", "secret": {"secretName": "kafka-client"}}]
    assert {"name": "bundles-0", "mountPath": "/mnt/bundles/models", "readOnly": True} in container["volumeMounts"]
    flags = _flags(workers)
    assert (flags["bundle"], flags["challenger-bundle"]) == (
        "/mnt/bundles/models/fraud/v1",
        "/mnt/bundles/models/fraud/v2",
    )
    assert (flags["version"], flags["challenger-version"]) == ("v1", "v2")


def _status(workers: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {**workers, "metadata": {**workers["metadata"], "generation": 2}, "status": status}


def test_both_versions_are_ready_once_every_worker_runs_the_current_template() -> None:
    workers = _workers(Release(V1, V2), replicas=2)
    rolled = {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2, "currentRevision": "r2"}
    assert ready_versions([_status(workers, **rolled, updateRevision="r2")], frozenset()) == {V1.version, V2.version}
    rolling = {**rolled, "updatedReplicas": 1, "updateRevision": "r3"}
    assert ready_versions([_status(workers, **rolling)], frozenset()) == frozenset()
    # While a change rolls out, records wait for the worker being replaced: nothing goes unanswered.
    replacing = {**rolling, "readyReplicas": 0}
    assert ready_versions([_status(workers, **replacing)], frozenset(), current=False) == {V1.version, V2.version}
    stopped = {**rolled, "readyReplicas": 1, "updateRevision": "r2"}
    assert ready_versions([_status(workers, **stopped)], frozenset(), current=False) == frozenset()


def test_streaming_releases_walk_the_online_stages_and_are_judged_on_the_workers_metrics() -> None:
    streaming = modes.mode("streaming")
    assert streaming is not None
    assert streaming.evidence == "scrapes"
    assert streaming.layout.canary
    assert not streaming.layout.always_shadows
    assert streaming.gateway("payment-fraud", "tns", V2.version, _spec()) is None
