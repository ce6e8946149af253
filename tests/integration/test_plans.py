"""Planned children, routes from every provider included, are objects the API server accepts as planned, owned
by their ModelDeployment; applying the same plan again changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from steward_harness.kubectl import Kubectl
from steward_operator import specs
from steward_operator.modes import Live, Release
from steward_operator.planners import plan as plan_children
from tests.conftest import REPOSITORY


@pytest.mark.parametrize("provider", ["gateway-api", "istio", "kserve"])
def test_a_canary_plan_applies_and_reapplies_without_change(cluster: Kubectl, namespace: str, provider: str) -> None:
    manifest = yaml.safe_load((REPOSITORY / "examples" / "full.yaml").read_text())
    rollout = manifest["spec"]["rollout"]
    rollout["traffic"]["provider"] = provider
    if provider == "kserve":
        del rollout["shadow"]  # refused with KServe's own canary
    cluster.run("apply", "--server-side", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))
    stored = cluster.json("get", "md", "house-prices", "-n", namespace)
    spec = specs.ModelDeployment.model_validate(stored).spec
    shadow = 0 if provider == "kserve" else 25
    release = Release(
        Live("v1", "s3://models/house-prices/v1/"), Live("v2", "s3://models/house-prices/v2/"), 25, shadow
    )
    plan = plan_children("house-prices", namespace, stored["metadata"]["uid"], spec, release)
    for child in [*plan.of("InferenceService"), *plan.routes]:
        body = json.dumps(child)
        cluster.run("apply", "--server-side", "--field-manager=steward", "-f", "-", stdin=body)
        kind, name = child["kind"].lower(), child["metadata"]["name"]
        first = cluster.json("get", kind, name, "-n", namespace)
        # Stored as written, with at most the schema's defaults added.
        assert _written_into(child["spec"], first["spec"]), kind
        assert first["metadata"]["ownerReferences"][0]["uid"] == stored["metadata"]["uid"]
        cluster.run("apply", "--server-side", "--field-manager=steward", "-f", "-", stdin=body)
        again = cluster.json("get", kind, name, "-n", namespace)
        assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    services = cluster.json("get", "inferenceservices", "-n", namespace, "-l", "steward.dev/model=house-prices")
    versions = sorted(item["metadata"]["labels"]["steward.dev/version"] for item in services["items"])
    # KServe's own canary keeps both versions as revisions of one InferenceService, running the newest.
    assert versions == (["v2"] if provider == "kserve" else ["v1", "v2"])


def _written_into(written: Any, stored: Any) -> bool:
    """Whether every field of `written` is in `stored` with the same value (lists element by element)."""
    if isinstance(written, dict):
        return isinstance(stored, dict) and all(
            key in stored and _written_into(value, stored[key]) for key, value in written.items()
        )
    if isinstance(written, list):
        return isinstance(stored, list) and len(written) == len(stored) and all(map(_written_into, written, stored))
    return bool(written == stored)
