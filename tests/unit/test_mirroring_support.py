"""A shadow never takes live traffic down: the gateway-api provider's RequestMirror filter is written only when the
parent Gateway's class declares mirroring, and a release whose shadow stage may not mirror holds there, Stalled
and told once, with all traffic on the incumbent."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from steward_operator import specs
from steward_operator.children import Owner
from steward_operator.releases import ALL_TO_INCUMBENT, Decision, Observed
from steward_operator.traffic import Backend, Split, provider
from steward_operator.traffic.base import MirrorRefusal
from steward_operator.traffic.gateway_api import GatewayClass, mirror_refusal
from tests.support.releases import World
from tests.support.releases import holding as _holding
from tests.support.releases import reasons as _reasons
from tests.support.releases import weights_of as _weights

GATEWAY = "ingress/public"
# status.supportedFeatures as Traefik v3.6 publishes it for its GatewayClass: no mirroring among them.
TRAEFIK_FEATURES = [
    {"name": name}
    for name in ("Gateway", "HTTPRoute", "HTTPRouteHostRewrite", "HTTPRoutePathRewrite", "ReferenceGrant")
]
MIRRORING = [{"name": "HTTPRouteRequestMirror"}, {"name": "HTTPRouteRequestPercentageMirror"}]


def _gateway(class_name: str = "traefik") -> dict[str, Any]:
    return {"metadata": {"name": "public", "namespace": "ingress"}, "spec": {"gatewayClassName": class_name}}


def _class(features: object, controller: str = "traefik.io/gateway-controller") -> dict[str, Any]:
    return {
        "metadata": {"name": "traefik"},
        "spec": {"controllerName": controller},
        "status": {"supportedFeatures": features},
    }


# --- what the GatewayClass declares ----------------------------------------------------------------------------


def test_the_features_a_gateway_class_declares_are_read_from_its_status() -> None:
    found = GatewayClass.read(GATEWAY, _gateway(), _class([*TRAEFIK_FEATURES, {"name": "HTTPRouteRequestMirror"}]))
    assert (found.gateway, found.name, found.controller, found.unreadable) == (
        GATEWAY,
        "traefik",
        "traefik.io/gateway-controller",
        "",
    )
    assert "HTTPRouteRequestMirror" in found.features
    assert "HTTPRouteRequestPercentageMirror" not in found.features


def test_plain_feature_names_of_the_first_experimental_releases_count_too() -> None:
    found = GatewayClass.read(GATEWAY, _gateway(), _class(["HTTPRouteRequestMirror", "HTTPRoute"]))
    assert found.features == {"HTTPRouteRequestMirror", "HTTPRoute"}


@pytest.mark.parametrize(
    "features", [None, "HTTPRouteRequestMirror", {"name": "HTTPRouteRequestMirror"}, [["x"], {"name": ["x"]}, 7]]
)
def test_a_malformed_status_declares_nothing_and_breaks_nothing(features: object) -> None:
    assert GatewayClass.read(GATEWAY, _gateway(), _class(features)).features == frozenset()


def test_a_gateway_or_class_that_is_not_there_is_unreadable_not_assumed() -> None:
    assert "no such Gateway" in GatewayClass.read(GATEWAY, None, None).unreadable
    missing = GatewayClass.read(GATEWAY, _gateway("gone"), None)
    assert (missing.name, missing.unreadable) == ("gone", "its GatewayClass 'gone' does not exist")


# --- whether a mirror may be written -----------------------------------------------------------------------------


def test_a_class_that_declares_mirroring_a_share_may_carry_the_filter() -> None:
    assert mirror_refusal(GatewayClass.read(GATEWAY, _gateway(), _class(MIRRORING)), 25) is None


def test_mirroring_everything_needs_only_the_mirror_feature_and_writes_no_percent() -> None:
    found = GatewayClass.read(GATEWAY, _gateway(), _class([{"name": "HTTPRouteRequestMirror"}]))
    assert mirror_refusal(found, 100) is None
    refused = mirror_refusal(found, 50)
    assert refused is not None
    assert "does not declare HTTPRouteRequestPercentageMirror" in refused.message
    owner = Owner("churn", "ml", "1234", specs.Traffic(gateway=GATEWAY))
    split = Split(Backend("churn--v1-predictor", "ml"), Backend("churn--v2-predictor", "ml"), shadow_percent=100)
    ((rule,),) = [route["spec"]["rules"] for route in provider("gateway-api").routes(owner, split)]
    assert rule["filters"] == [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "churn--v2-predictor", "port": 80}}}
    ]


def test_a_class_that_does_not_declare_mirroring_is_refused_with_who_implements_it_and_what_to_do() -> None:
    refused = mirror_refusal(GatewayClass.read(GATEWAY, _gateway(), _class(TRAEFIK_FEATURES)), 25)
    assert refused is not None
    assert refused.reason == "MirroringUnsupported"
    for fragment in (
        "GatewayClass traefik of Gateway ingress/public (controller traefik.io/gateway-controller)",
        "does not declare HTTPRouteRequestMirror and HTTPRouteRequestPercentageMirror",
        "switch spec.rollout.traffic.provider to traefik",
        "`kubectl steward promote`",
    ):
        assert fragment in refused.message
    assert mirror_refusal(GatewayClass.read(GATEWAY, _gateway(), {"metadata": {"name": "old"}}), 100) is not None


def test_what_cannot_be_read_is_said_so_and_not_assumed() -> None:
    refused = mirror_refusal(GatewayClass(GATEWAY, unreadable="the operator may not read it (403 Forbidden)"), 25)
    assert refused is not None
    assert refused.reason == "MirroringUnverified"
    assert (
        "cannot tell whether Gateway ingress/public mirrors requests: the operator may not read it" in refused.message
    )


# --- the release while its shadow may not mirror ------------------------------------------------------------------

REFUSED = MirrorRefusal("MirroringUnsupported", "GatewayClass traefik does not declare HTTPRouteRequestMirror")


@dataclass
class GatewayWorld(World):
    """A World whose routes attach to a Gateway that may refuse mirroring."""

    refused: MirrorRefusal | None = REFUSED

    @property
    def observed(self) -> Observed:
        return replace(super().observed, mirroring_refused=self.refused)


def _shadowing() -> GatewayWorld:
    """v2 released on a Gateway that does not mirror, ready, and moved to the shadow stage."""
    world = GatewayWorld("full.yaml", ready={"v1"})
    world.reconcile()
    world.serve("v2")
    world.become_ready("v2")
    world.command("promote")
    assert world.status.phase == "Shadowing"
    return world


def test_the_shadow_stage_holds_without_its_mirror_stalled_and_told_once() -> None:
    world = GatewayWorld("full.yaml", ready={"v1"})
    world.reconcile()
    world.serve("v2")
    world.become_ready("v2")
    step = world.command("promote")
    assert step.status.phase == "Shadowing"
    assert step.status.weights == ALL_TO_INCUMBENT
    assert _holding(step.status) == {"Stalled": "MirroringUnsupported"}
    stalled = {condition.type: condition for condition in step.status.conditions}["Stalled"]
    assert stalled.message == f"releasing v2, held at the shadow stage: {REFUSED.message}"
    assert step.decisions[-1] == Decision("MirroringUnsupported", REFUSED.message, warning=True)
    assert _reasons(step).count("MirroringUnsupported") == 1
    for _ in range(3):
        again = world.wait()
        assert again.decisions == ()
        assert again.status.weights == ALL_TO_INCUMBENT
        assert again.status.conditions == step.status.conditions


def test_the_held_release_mirrors_once_the_gateway_declares_it() -> None:
    world = _shadowing()
    world.refused = None
    step = world.wait()
    assert step.status.weights == _weights(100, 0, 25)
    assert _reasons(step) == ["TrafficShifted"]
    assert _holding(step.status) == {"Reconciling": "Shadowing"}


def test_promote_skips_the_shadow_stage_and_the_canary_needs_no_mirror() -> None:
    world = _shadowing()
    step = world.command("promote")
    assert (step.status.phase, step.status.weights) == ("Canary", _weights(95, 5, 0))
    assert _holding(step.status) == {"Reconciling": "Canary"}


def test_a_mirror_in_force_when_the_gateway_stops_declaring_it_is_taken_down() -> None:
    world = _shadowing()
    world.refused = None
    world.wait()
    assert world.status.weights == _weights(100, 0, 25)
    world.refused = REFUSED
    step = world.wait()
    assert step.status.weights == ALL_TO_INCUMBENT
    assert _reasons(step) == ["TrafficShifted", "MirroringUnsupported"]
    assert _holding(step.status) == {"Stalled": "MirroringUnsupported"}


def test_a_refusal_changes_nothing_outside_the_shadow_stage() -> None:
    world = GatewayWorld("online.yaml", {"validation": {"enabled": False}}, ready={"v1"})
    world.reconcile()
    world.serve("v2")
    step = world.become_ready("v2")
    assert (step.status.phase, step.status.weights) == ("Canary", _weights(95, 5, 0))
    assert "MirroringUnsupported" not in _reasons(step)
    assert not _holding(step.status).get("Stalled")
