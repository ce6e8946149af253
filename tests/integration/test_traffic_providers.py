"""Traffic providers against the pinned upstream Gateway API and Traefik CRDs, with the real operator: the traefik
provider's TraefikServices and routes are what the real schemas store, weights move with the canary steps and
the mirror with the shadow stage; the gateway-api provider writes a RequestMirror filter only on a Gateway whose
class declares mirroring, and otherwise holds the shadow stage, Stalled and told once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from steward_harness import upstream
from steward_harness.controlplane import ControlPlane
from steward_harness.kubectl import Kubectl
from steward_operator import specs
from steward_operator.children import Owner
from steward_operator.traffic import Backend, Split, provider
from tests.support.deployments import Deployment, example, version
from tests.support.waiting import wait_until

TRAEFIK_SERVICES = "traefikservices.traefik.io"
# What Traefik v3.6 declares for its GatewayClass (pkg/provider/kubernetes/gateway/features.go), in part: no mirror.
TRAEFIK_FEATURES = ["Gateway", "GatewayPort8080", "HTTPRoute", "HTTPRouteHostRewrite", "ReferenceGrant"]
MIRROR_FEATURES = ["HTTPRouteRequestMirror", "HTTPRouteRequestPercentageMirror"]


@pytest.fixture(scope="module")
def upstream_kinds(cluster: Kubectl) -> Kubectl:
    """kubectl on a control plane serving the pinned Gateway API and Traefik CRDs, whatever else is installed."""
    cluster.install_crds(upstream.crds(("gateway-api", "traefik")))
    return cluster


@pytest.fixture
def deploy(upstream_kinds: Kubectl, control_plane: ControlPlane, operated_namespace: str) -> Any:
    def start(manifest: dict[str, Any]) -> Deployment:
        deployment = Deployment(upstream_kinds, control_plane, operated_namespace, manifest)
        deployment.apply()
        return deployment

    return start


@pytest.fixture
def gateway_class(upstream_kinds: Kubectl) -> Iterator[str]:
    """A GatewayClass of its own (cluster-scoped), declaring what Traefik declares; removed afterwards."""
    name = f"steward-{uuid.uuid4().hex[:8]}"
    body = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": "traefik.io/gateway-controller"},
    }
    upstream_kinds.run("apply", "-f", "-", stdin=json.dumps(body))
    declare(upstream_kinds, name, TRAEFIK_FEATURES)
    yield name
    upstream_kinds.run("delete", "gatewayclass", name, "--wait=false")


def declare(cluster: Kubectl, gateway_class: str, features: list[str]) -> None:
    """Write status.supportedFeatures as the class's controller would (objects with a name, sorted)."""
    status = {"status": {"supportedFeatures": [{"name": name} for name in sorted(features)]}}
    cluster.run(
        "patch", "gatewayclass", gateway_class, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )


def traefik_services(deployment: Deployment) -> dict[str, dict[str, Any]]:
    items = deployment.cluster.json("get", TRAEFIK_SERVICES, "-n", deployment.namespace)["items"]
    return {item["metadata"]["name"]: item for item in items}


def shares(deployment: Deployment) -> list[tuple[str, int]]:
    """The weighted TraefikService's split, as (Service, weight)."""
    weighted = traefik_services(deployment)[f"{deployment.name}--split"]["spec"]["weighted"]
    return [(service["name"], service["weight"]) for service in weighted["services"]]


def wait_for_shares(deployment: Deployment, expected: list[tuple[str, int]]) -> None:
    wait_until(lambda: shares(deployment) == expected)


def mirrors(deployment: Deployment) -> list[tuple[str, int]]:
    mirroring = traefik_services(deployment)[deployment.name]["spec"]["mirroring"]
    return [(mirror["name"], mirror["percent"]) for mirror in mirroring.get("mirrors", [])]


def stored_as_planned(deployment: Deployment, kind: str, resource: str, split: Split) -> None:
    """The objects of `kind` the API server stored hold exactly the spec the provider plans for `split`: the real
    schema took every field, pruned none and defaulted none."""
    body = deployment.get()
    traffic = specs.ModelDeployment.model_validate(body).spec.rollout.traffic
    owner = Owner(deployment.name, deployment.namespace, body["metadata"]["uid"], traffic)
    planned = {r["metadata"]["name"]: r["spec"] for r in provider("traefik").routes(owner, split) if r["kind"] == kind}
    items = deployment.cluster.json("get", resource, "-n", deployment.namespace)["items"]
    assert {item["metadata"]["name"]: item["spec"] for item in items} == planned


def stalled(deployment: Deployment) -> dict[str, Any] | None:
    conditions = {c["type"]: c for c in deployment.status().get("conditions", [])}
    return conditions["Stalled"] if conditions.get("Stalled", {}).get("status") == "True" else None


def test_the_traefik_provider_moves_weights_and_mirror_through_traefik_services(deploy: Any) -> None:
    manifest = example("online.yaml")
    manifest["spec"]["rollout"] = {
        "traffic": {"provider": "traefik", "hostnames": ["churn.example.com"]},
        "validation": {"enabled": False},
        "shadow": {"percent": 20},
        "canary": {"steps": [10, 40]},
    }
    churn = deploy(manifest)
    churn.wait("Stable", incumbent=100)
    v1, v2 = "churn--2024-06-01-predictor", "churn--2024-07-01-predictor"
    wait_until(lambda: shares(churn) == [(v1, 100)] if f"{churn.name}--split" in traefik_services(churn) else None)
    assert mirrors(churn) == []
    (route,) = churn.cluster.json("get", "ingressroutes.traefik.io", "-n", churn.namespace)["items"]
    assert route["spec"]["routes"][0]["match"] == "Host(`churn.example.com`)"
    assert churn.of_kind("HTTPRoute") == []
    stored_as_planned(churn, "TraefikService", TRAEFIK_SERVICES, Split(Backend(v1, churn.namespace)))

    churn.apply(version(churn.manifest, "2024-07-01"))
    churn.wait("Shadowing", incumbent=100, challenger=0, shadow=20)
    wait_until(lambda: mirrors(churn) == [(v2, 20)])
    assert shares(churn) == [(v1, 100)]
    stored_as_planned(
        churn,
        "TraefikService",
        TRAEFIK_SERVICES,
        Split(Backend(v1, churn.namespace), Backend(v2, churn.namespace), shadow_percent=20),
    )

    for weight in (10, 40):
        churn.steward("promote")
        churn.wait("Canary", incumbent=100 - weight, challenger=weight, shadow=0)
        wait_for_shares(churn, [(v1, 100 - weight), (v2, weight)])
        assert mirrors(churn) == []
    stored_as_planned(
        churn,
        "IngressRoute",
        "ingressroutes.traefik.io",
        Split(Backend(v1, churn.namespace), Backend(v2, churn.namespace), challenger_weight=40),
    )

    churn.steward("promote")
    churn.wait("Promoted", incumbent=100)
    wait_for_shares(churn, [(v2, 100)])
    for child in [*traefik_services(churn).values(), route]:
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("ModelDeployment", "churn", True)
    churn.assert_git_sees_no_drift()


def test_on_a_gateway_the_traefik_provider_routes_to_its_traefik_service_through_an_http_route(
    deploy: Any, operated_namespace: str
) -> None:
    manifest = example("online.yaml")
    manifest["spec"]["rollout"] = {"traffic": {"provider": "traefik", "gateway": "ingress/public"}}
    churn = deploy(manifest)
    churn.wait("Stable", incumbent=100)
    (route,) = wait_until(lambda: churn.of_kind("HTTPRoute"))
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "ingress"}
    ]
    # The schema defaults group and kind of a parentRef, and nothing of a backendRef to a TraefikService.
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"group": "traefik.io", "kind": "TraefikService", "name": "churn", "weight": 1}
    ]
    assert churn.cluster.json("get", "ingressroutes.traefik.io", "-n", operated_namespace)["items"] == []


def test_a_gateway_api_shadow_mirrors_only_where_the_gateway_class_declares_it(
    deploy: Any, gateway_class: str, operated_namespace: str
) -> None:
    manifest = example("online.yaml")
    manifest["spec"]["rollout"] = {
        "traffic": {"provider": "gateway-api", "gateway": "public"},
        "validation": {"enabled": False},
        "shadow": {"percent": 25},
    }
    churn = deploy(manifest)
    churn.wait("Stable", incumbent=100)
    churn.apply(version(churn.manifest, "2024-07-01"))

    # No Gateway yet: nothing says what would serve a mirror, so none is written.
    condition = wait_until(lambda: stalled(churn))
    assert condition["reason"] == "MirroringUnverified"
    assert f"cannot tell whether Gateway {operated_namespace}/public mirrors requests" in condition["message"]

    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "public", "namespace": operated_namespace},
        "spec": {"gatewayClassName": gateway_class, "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
    }
    churn.cluster.run("apply", "-f", "-", stdin=json.dumps(gateway))
    condition = wait_until(lambda: (found := stalled(churn)) and found["reason"] == "MirroringUnsupported" and found)
    assert f"GatewayClass {gateway_class} of Gateway {operated_namespace}/public" in condition["message"]
    assert "(controller traefik.io/gateway-controller)" in condition["message"]
    assert "does not declare HTTPRouteRequestMirror and HTTPRouteRequestPercentageMirror" in condition["message"]
    assert "switch spec.rollout.traffic.provider to traefik" in condition["message"]
    status = churn.status()
    assert (status["phase"], status["weights"]) == ("Shadowing", {"incumbent": 100, "challenger": 0, "shadow": 0})
    assert churn.mirror_percent() is None
    assert churn.route_weights() == [100, 0]
    time.sleep(11)  # Two resyncs later: still held, the refusal told once, and no filter.
    assert churn.reasons().count("MirroringUnsupported") == 1
    assert churn.reasons().count("MirroringUnverified") == 1
    assert churn.mirror_percent() is None
    assert churn.status()["weights"]["shadow"] == 0

    # The implementation declares mirroring now: the held shadow stage takes its mirror by itself.
    declare(churn.cluster, gateway_class, [*TRAEFIK_FEATURES, *MIRROR_FEATURES])
    churn.wait("Shadowing", incumbent=100, challenger=0, shadow=25)
    wait_until(lambda: churn.mirror_percent() == 25)
    assert stalled(churn) is None
