"""The route objects each traffic provider writes are accepted by the API server as they are, owned by their
ModelDeployment, and applying them again changes nothing."""

from __future__ import annotations

import json

import pytest
import yaml

from steward_harness.kubectl import Kubectl
from steward_operator import specs
from steward_operator.providers import Backend, Split, provider
from steward_operator.providers.base import Owner
from tests.conftest import REPOSITORY


@pytest.fixture(scope="module")
def cluster(kubectl: Kubectl) -> Kubectl:
    kubectl.install_crds(REPOSITORY / "tests" / "crds")
    return kubectl


@pytest.mark.parametrize("name", ["gateway-api", "istio"])
def test_routes_apply_and_reapply_without_change(cluster: Kubectl, namespace: str, name: str) -> None:
    manifest = yaml.safe_load((REPOSITORY / "examples" / "full.yaml").read_text())
    manifest["spec"]["rollout"]["traffic"]["provider"] = name
    cluster.run("apply", "--server-side", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))
    stored = cluster.json("get", "md", "house-prices", "-n", namespace)
    resource = specs.ModelDeployment.model_validate(stored)
    owner = Owner("house-prices", namespace, stored["metadata"]["uid"], resource.spec.rollout.traffic)
    split = Split(
        Backend("house-prices-v1-predictor", namespace),
        Backend("house-prices-v2-predictor", namespace),
        challenger_weight=25,
        shadow_percent=25,
    )
    for route in provider(name).routes(owner, split):
        body = json.dumps(route)
        cluster.run("apply", "--server-side", "--field-manager=steward", "-f", "-", stdin=body)
        kind = route["kind"].lower()
        first = cluster.json("get", kind, route["metadata"]["name"], "-n", namespace)
        assert first["spec"] == route["spec"]
        assert first["metadata"]["ownerReferences"][0]["name"] == "house-prices"
        cluster.run("apply", "--server-side", "--field-manager=steward", "-f", "-", stdin=body)
        again = cluster.json("get", kind, route["metadata"]["name"], "-n", namespace)
        assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
