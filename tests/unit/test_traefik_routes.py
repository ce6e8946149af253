"""The traefik provider: a weighted TraefikService for the split, a mirroring one in front of it for the shadow,
and one entry route that points at the mirroring service whatever the stage."""

from __future__ import annotations

from typing import Any

import pytest

from steward_operator import specs
from steward_operator.children import Owner
from steward_operator.modes import Live, Release
from steward_operator.planners import plan as plan_children
from steward_operator.traffic import Backend, Split, provider

INCUMBENT = Backend("churn--v1-predictor", "ml")
CHALLENGER = Backend("churn--v2-predictor", "ml")


def _owner(gateway: str | None = None, hostnames: tuple[str, ...] = ("churn.example.com",)) -> Owner:
    traffic = specs.Traffic.model_validate({"provider": "traefik", "gateway": gateway, "hostnames": list(hostnames)})
    return Owner(name="churn", namespace="ml", uid="1234", traffic=traffic)


def _objects(split: Split, owner: Owner | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (route["kind"], route["metadata"]["name"]): route
        for route in provider("traefik").routes(owner or _owner(), split)
    }


def test_a_canary_step_is_a_weighted_traefik_service_behind_a_mirroring_one_without_mirrors() -> None:
    found = _objects(Split(INCUMBENT, CHALLENGER, challenger_weight=25))
    assert set(found) == {("TraefikService", "churn--split"), ("TraefikService", "churn"), ("IngressRoute", "churn")}
    assert found["TraefikService", "churn--split"]["spec"] == {
        "weighted": {
            "services": [
                {"name": "churn--v1-predictor", "kind": "Service", "port": 80, "weight": 75},
                {"name": "churn--v2-predictor", "kind": "Service", "port": 80, "weight": 25},
            ]
        }
    }
    assert found["TraefikService", "churn"]["spec"] == {"mirroring": {"kind": "TraefikService", "name": "churn--split"}}
    for route in found.values():
        assert route["apiVersion"] == "traefik.io/v1alpha1"
        (owner,) = route["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", "1234", True)
        assert route["metadata"]["labels"]["steward.dev/model"] == "churn"


def test_the_shadow_stage_mirrors_its_share_to_the_challenger_which_answers_nothing() -> None:
    found = _objects(Split(INCUMBENT, CHALLENGER, shadow_percent=10))
    assert found["TraefikService", "churn--split"]["spec"]["weighted"]["services"] == [
        {"name": "churn--v1-predictor", "kind": "Service", "port": 80, "weight": 100}
    ]
    assert found["TraefikService", "churn"]["spec"]["mirroring"] == {
        "kind": "TraefikService",
        "name": "churn--split",
        "mirrors": [{"name": "churn--v2-predictor", "kind": "Service", "port": 80, "percent": 10}],
    }


def test_a_version_without_a_share_is_not_named_since_traefik_drops_a_service_naming_a_missing_one() -> None:
    """A challenger's Service exists only once KServe made it; while it has no share, nothing names it."""
    for split in (Split(INCUMBENT), Split(INCUMBENT, CHALLENGER)):
        found = _objects(split)
        assert "churn--v2-predictor" not in str(found), split
        assert found["TraefikService", "churn--split"]["spec"]["weighted"]["services"] == [
            {"name": "churn--v1-predictor", "kind": "Service", "port": 80, "weight": 100}
        ]
    everything = _objects(Split(INCUMBENT, CHALLENGER, challenger_weight=100))
    assert [
        service["name"] for service in everything["TraefikService", "churn--split"]["spec"]["weighted"]["services"]
    ] == ["churn--v2-predictor"]


def test_without_a_gateway_an_ingress_route_for_the_hostnames_leads_to_the_mirroring_service() -> None:
    found = _objects(Split(INCUMBENT), _owner(hostnames=("churn.example.com", "*.models.example.com")))
    assert found["IngressRoute", "churn"]["spec"] == {
        "routes": [
            {
                "kind": "Rule",
                "match": r"Host(`churn.example.com`) || HostRegexp(`^[a-z0-9.-]+\.models\.example\.com$`)",
                "services": [{"name": "churn", "kind": "TraefikService"}],
            }
        ]
    }


def test_with_a_gateway_an_http_route_leads_to_the_mirroring_service_as_traefik_resolves_it() -> None:
    """Traefik's Gateway API provider takes a backendRef of group traefik.io and kind TraefikService by the
    service's name in the route's namespace; no port (only a core Service needs one)."""
    found = _objects(Split(INCUMBENT, CHALLENGER, challenger_weight=5), _owner(gateway="ingress/public"))
    assert ("IngressRoute", "churn") not in found
    route = found["HTTPRoute", "churn"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"] == {
        "parentRefs": [{"name": "public", "namespace": "ingress"}],
        "rules": [{"backendRefs": [{"group": "traefik.io", "name": "churn", "kind": "TraefikService"}]}],
        "hostnames": ["churn.example.com"],
    }


@pytest.mark.parametrize("gateway", [None, "public"])
def test_the_entry_route_is_the_same_at_every_stage(gateway: str | None) -> None:
    """A stage rewrites the TraefikServices only: the route Traefik's other provider reads never changes, so no
    moment finds it pointing at a service not loaded yet."""
    splits = [
        Split(INCUMBENT),
        Split(INCUMBENT, CHALLENGER),
        Split(INCUMBENT, CHALLENGER, shadow_percent=50),
        Split(INCUMBENT, CHALLENGER, challenger_weight=25),
    ]
    entries = [
        [route for route in provider("traefik").routes(_owner(gateway), split) if route["kind"] != "TraefikService"]
        for split in splits
    ]
    assert all(entry == entries[0] for entry in entries)


@pytest.mark.parametrize(
    "hostname", ["churn.example.com`) || PathPrefix(`/", "Churn.example.com", "*", "churn..example.com", "a b"]
)
def test_a_hostname_that_could_widen_the_rule_is_never_written(hostname: str) -> None:
    traffic = specs.Traffic(provider="traefik", hostnames=[hostname])
    with pytest.raises(ValueError, match="not a DNS host name"):
        provider("traefik").routes(Owner("churn", "ml", "1234", traffic), Split(INCUMBENT))


def test_no_route_is_written_that_would_take_every_request_of_an_entrypoint() -> None:
    with pytest.raises(ValueError, match=r"needs spec\.rollout\.traffic\.gateway or spec\.rollout\.traffic\.hostnames"):
        provider("traefik").routes(_owner(hostnames=()), Split(INCUMBENT))


def test_planning_applies_the_traefik_services_before_the_route_that_names_them() -> None:
    spec = specs.ModelDeploymentSpec.model_validate(
        {
            "owner": {"team": "t", "contact": "t@example.com", "runbook": "https://runbooks.example.com/churn"},
            "model": {"version": "v2", "bundle": "s3://models/churn/v2/"},
            "rollout": {"traffic": {"provider": "traefik", "hostnames": ["churn.example.com"]}},
        }
    )
    plan = plan_children("churn", "ml", "1234", spec, Release(Live("v1", "s3://v1/"), Live("v2", "s3://v2/"), 5))
    assert [(route["kind"], route["metadata"]["name"]) for route in plan.routes] == [
        ("TraefikService", "churn--split"),
        ("TraefikService", "churn"),
        ("IngressRoute", "churn"),
    ]
    assert [service["metadata"]["name"] for service in plan.of("InferenceService")] == ["churn--v1", "churn--v2"]
