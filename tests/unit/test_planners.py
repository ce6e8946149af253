"""Planning online serving: the InferenceServices and routes a ModelDeployment should have at each point of a
release, as pure data."""

from __future__ import annotations

import pytest
import yaml

from steward_monitor.tokens import IngestKey
from steward_operator import settings, specs
from steward_operator.children import child_name
from steward_operator.modes import Live, Release
from steward_operator.planners import plan as plan_children
from tests.conftest import REPOSITORY

V1 = Live("2024-06-01", "s3://models/churn/2024-06-01/", "sha256:" + "a" * 64)
V2 = Live("2024-07-01", "s3://models/churn/2024-07-01/")


def _spec(example: str = "online.yaml", **rollout: object) -> specs.ModelDeploymentSpec:
    manifest = yaml.safe_load((REPOSITORY / "examples" / example).read_text())
    manifest["spec"].setdefault("rollout", {}).update(rollout)
    return specs.ModelDeploymentSpec.model_validate(manifest["spec"])


def test_child_names_are_dns_labels_and_never_collide() -> None:
    assert child_name("churn", "2024-06-01") == "churn--2024-06-01"
    assert child_name("churn", "v7") == "churn--v7"
    dotted, underscored = child_name("churn", "v1.0"), child_name("churn", "v1_0")
    assert dotted != underscored
    assert dotted.startswith("churn--v1-0-")
    # Two ModelDeployments whose name and version join the same way with one dash get children of their own.
    assert child_name("case1", "v1-0") != child_name("case1-v1", "0")
    long = child_name("a-model-name-that-is-quite-long", "release-candidate-2024-06-01-final")
    assert len(long) <= 52
    assert long == long.lower().strip("-")


def test_a_stable_model_has_one_inference_service_and_all_traffic() -> None:
    plan = plan_children("churn", "ml", "uid-1", _spec(), Release(V1))
    (service,) = plan.of("InferenceService")
    assert service["metadata"]["name"] == "churn--2024-06-01"
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    labels = service["metadata"]["labels"]
    assert labels["steward.dev/version"] == "2024-06-01"
    assert "steward.dev/variant" not in labels
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    predictor = service["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 6)
    (container,) = predictor["containers"]
    environment = {item["name"]: item["value"] for item in container["env"]}
    assert environment == {
        "STORAGE_URI": V1.bundle,
        "STEWARD_MODEL_VERSION": V1.version,
        "STEWARD_BUNDLE_DIGEST": V1.digest,
        # spec.monitoring.drift (defaults): the monitor judges this version's drift by them.
        "STEWARD_DRIFT_WARN": "0.1",
        "STEWARD_DRIFT_ALERT": "0.25",
        "STEWARD_DRIFT_BREACHES": "2",
        "STEWARD_DRIFT_WINDOWS": "3",
        "STEWARD_DRIFT_SECONDS": "3600",
    }
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/churn"
    # A stopping pod answers on until the gateways have taken it out: a rollout is hitless.
    assert container["lifecycle"] == {"preStop": {"exec": {"command": ["/bin/sleep", "10"]}}}
    (route,) = plan.routes
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "churn--2024-06-01-predictor", "port": 80, "weight": 100}
    ]


def test_with_a_monitor_every_predictor_reports_to_it_under_its_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "MONITOR_URL", "http://steward-monitor.steward-system.svc:8080")
    plan = plan_children("churn", "ml", "uid-1", _spec(), Release(V1, V2))
    for service in plan.of("InferenceService"):
        (container,) = service["spec"]["predictor"]["containers"]
        environment = {item["name"]: item["value"] for item in container["env"]}
        assert environment["STEWARD_MONITOR_URL"] == "http://steward-monitor.steward-system.svc:8080"
        assert environment["STEWARD_NAMESPACE"] == "ml"
        assert "STEWARD_MONITOR_TOKEN" not in environment  # No key, no token: the monitor refuses their reports.


def test_with_the_monitors_key_predictors_get_a_token_for_their_own_model_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "MONITOR_URL", "http://steward-monitor.steward-system.svc:8080")
    monkeypatch.setattr(settings, "MONITOR_INGEST_KEY", "s3cret")
    key = IngestKey("s3cret\n")  # As the monitor reads its mounted Secret.
    for service in plan_children("churn", "ml", "uid-1", _spec(), Release(V1, V2)).of("InferenceService"):
        (container,) = service["spec"]["predictor"]["containers"]
        token = {item["name"]: item["value"] for item in container["env"]}["STEWARD_MONITOR_TOKEN"]
        assert key.scope(f"Bearer {token}") == ("ml", "churn")
    (other,) = plan_children("fraud", "ml", "uid-2", _spec(), Release(V1)).of("InferenceService")
    assert other["spec"]["predictor"]["containers"][0]["env"][-1]["value"] != token


def test_a_shadowed_challenger_gets_mirrored_traffic_and_no_weight() -> None:
    plan = plan_children("churn", "ml", "uid-1", _spec(shadow={"percent": 50}), Release(V1, V2, 0, 50))
    _, challenger = plan.of("InferenceService")
    (rule,) = plan.routes[0]["spec"]["rules"]
    assert [ref["weight"] for ref in rule["backendRefs"]] == [100, 0]
    assert rule["filters"][0]["requestMirror"]["percent"] == 50
    assert "canaryTrafficPercent" not in challenger["spec"]["predictor"]


@pytest.mark.parametrize(("provider", "routes"), [("gateway-api", 1), ("istio", 1), ("kserve", 0)])
def test_a_canary_step_splits_traffic_through_the_chosen_provider(provider: str, routes: int) -> None:
    plan = plan_children("churn", "ml", "uid-1", _spec(traffic={"provider": provider}), Release(V1, V2, 25))
    assert len(plan.routes) == routes
    if provider != "kserve":
        assert [s["metadata"]["name"] for s in plan.of("InferenceService")] == [
            "churn--2024-06-01",
            "churn--2024-07-01",
        ]
        return
    # KServe's canary: one InferenceService runs the challenger; KServe sends the rest to the revision before.
    (service,) = plan.of("InferenceService")
    assert service["metadata"]["name"] == "churn"
    assert service["metadata"]["labels"]["steward.dev/version"] == V2.version
    assert service["spec"]["predictor"]["canaryTrafficPercent"] == 25
    environment = {item["name"]: item["value"] for item in service["spec"]["predictor"]["containers"][0]["env"]}
    assert environment["STORAGE_URI"] == V2.bundle


def test_with_kserve_a_settled_model_runs_its_incumbent_with_all_traffic() -> None:
    plan = plan_children("churn", "ml", "uid-1", _spec(traffic={"provider": "kserve"}), Release(V1))
    (service,) = plan.of("InferenceService")
    assert service["metadata"]["name"] == "churn"
    assert "canaryTrafficPercent" not in service["spec"]["predictor"]
    assert service["spec"]["predictor"]["containers"][0]["env"][0]["value"] == V1.bundle


def test_types_a_team_trusts_by_name_reach_every_predictor() -> None:
    spec = _spec()
    spec = spec.model_copy(
        update={"model": spec.model.model_copy(update={"trusted_types": ["features.clean_text", "features.Bucket"]})}
    )
    for service in plan_children("churn", "ml", "uid-1", spec, Release(V1, V2)).of("InferenceService"):
        (container,) = service["spec"]["predictor"]["containers"]
        environment = {item["name"]: item["value"] for item in container["env"]}
        assert environment["STEWARD_TRUSTED_TYPES"] == "features.clean_text,features.Bucket"
    untrusting = plan_children("churn", "ml", "uid-1", _spec(), Release(V1)).of("InferenceService")[0]
    assert "STEWARD_TRUSTED_TYPES" not in {
        item["name"] for item in untrusting["spec"]["predictor"]["containers"][0]["env"]
    }
