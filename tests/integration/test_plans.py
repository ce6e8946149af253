"""Planned children are objects the API server accepts as planned, owned by their ModelDeployment; applying the
same plan again changes nothing."""

from __future__ import annotations

import json

import pytest
import yaml

from steward_harness.kubectl import Kubectl
from steward_operator import specs
from steward_operator.planners import Live, Release, plan_online
from tests.conftest import REPOSITORY


@pytest.fixture(scope="module")
def cluster(kubectl: Kubectl) -> Kubectl:
    kubectl.install_crds(REPOSITORY / "tests" / "crds")
    return kubectl


@pytest.mark.parametrize("provider", ["gateway-api", "istio", "kserve"])
def test_a_canary_plan_applies_and_reapplies_without_change(cluster: Kubectl, namespace: str, provider: str) -> None:
    manifest = yaml.safe_load((REPOSITORY / "examples" / "online.yaml").read_text())
    manifest["spec"]["rollout"] = {"traffic": {"provider": provider}}
    cluster.run("apply", "--server-side", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))
    stored = cluster.json("get", "md", "churn", "-n", namespace)
    spec = specs.ModelDeployment.model_validate(stored).spec
    release = Release(Live("2024-06-01", "s3://models/churn/2024-06-01/"), Live("2024-07-01", "s3://m/2024-07-01/"), 25)
    plan = plan_online("churn", namespace, stored["metadata"]["uid"], spec, release)
    for child in [*plan.inference_services, *plan.routes]:
        body = json.dumps(child)
        cluster.run("apply", "--server-side", "--field-manager=steward", "-f", "-", stdin=body)
        kind, name = child["kind"].lower(), child["metadata"]["name"]
        first = cluster.json("get", kind, name, "-n", namespace)
        assert first["spec"] == child["spec"], kind
        assert first["metadata"]["ownerReferences"][0]["uid"] == stored["metadata"]["uid"]
        cluster.run("apply", "--server-side", "--field-manager=steward", "-f", "-", stdin=body)
        assert (
            cluster.json("get", kind, name, "-n", namespace)["metadata"]["resourceVersion"]
            == first["metadata"]["resourceVersion"]
        )
    services = cluster.json("get", "inferenceservices", "-n", namespace, "-l", "steward.dev/model=churn")
    assert sorted(item["metadata"]["labels"]["steward.dev/variant"] for item in services["items"]) == [
        "challenger",
        "incumbent",
    ]
