"""Traffic providers turn a split into route objects; the decision of what the split is lives elsewhere."""

from __future__ import annotations

import pytest

from steward_operator import specs
from steward_operator.children import Owner
from steward_operator.traffic import Backend, Split, UnknownProviderError, provider
from steward_operator.traffic.base import ShadowNotSupportedError

INCUMBENT = Backend("churn-v1-predictor", "ml")
CHALLENGER = Backend("churn-v2-predictor", "ml")


def _owner(provider_name: str, gateway: str | None = None, hostnames: tuple[str, ...] = ()) -> Owner:
    traffic = specs.Traffic.model_validate(
        {"provider": provider_name, "gateway": gateway, "hostnames": list(hostnames)}
    )
    return Owner(name="churn", namespace="ml", uid="1234", traffic=traffic)


def test_unknown_providers_fail_loudly() -> None:
    with pytest.raises(UnknownProviderError, match="unknown traffic provider 'linkerd'"):
        provider("linkerd")


def test_every_provider_the_crd_allows_exists() -> None:
    for name in specs.Traffic.model_fields["provider"].annotation.__args__:  # type: ignore[union-attr]
        assert provider(name).name == name


def test_gateway_api_weights_and_mirror() -> None:
    (route,) = provider("gateway-api").routes(
        _owner("gateway-api", gateway="ingress/public", hostnames=("churn.example.com",)),
        Split(INCUMBENT, CHALLENGER, challenger_weight=25, shadow_percent=10),
    )
    assert (route["apiVersion"], route["kind"]) == ("gateway.networking.k8s.io/v1", "HTTPRoute")
    assert route["metadata"]["ownerReferences"][0]["uid"] == "1234"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "ingress"}]
    assert route["spec"]["hostnames"] == ["churn.example.com"]
    (rule,) = route["spec"]["rules"]
    assert [(ref["name"], ref["weight"]) for ref in rule["backendRefs"]] == [
        ("churn-v1-predictor", 75),
        ("churn-v2-predictor", 25),
    ]
    assert rule["filters"] == [
        {
            "type": "RequestMirror",
            "requestMirror": {"backendRef": {"name": "churn-v2-predictor", "port": 80}, "percent": 10},
        }
    ]


def test_gateway_api_without_a_challenger_sends_everything_to_the_incumbent() -> None:
    (route,) = provider("gateway-api").routes(_owner("gateway-api"), Split(INCUMBENT))
    assert route["spec"]["rules"] == [{"backendRefs": [{"name": "churn-v1-predictor", "port": 80, "weight": 100}]}]
    assert "parentRefs" not in route["spec"]


def test_istio_weights_and_mirror_percentage() -> None:
    (service,) = provider("istio").routes(
        _owner("istio", gateway="mesh-gateway"), Split(INCUMBENT, CHALLENGER, challenger_weight=50, shadow_percent=100)
    )
    assert (service["apiVersion"], service["kind"]) == ("networking.istio.io/v1", "VirtualService")
    assert service["spec"]["hosts"] == ["churn.ml.svc.cluster.local"]
    assert service["spec"]["gateways"] == ["ml/mesh-gateway"]
    (http,) = service["spec"]["http"]
    assert [(route["destination"]["host"], route["weight"]) for route in http["route"]] == [
        ("churn-v1-predictor.ml.svc.cluster.local", 50),
        ("churn-v2-predictor.ml.svc.cluster.local", 50),
    ]
    assert http["mirror"]["host"] == "churn-v2-predictor.ml.svc.cluster.local"
    assert http["mirrorPercentage"] == {"value": 100.0}


def test_kserve_uses_its_own_canary_field_and_cannot_shadow() -> None:
    kserve = provider("kserve")
    assert kserve.routes(_owner("kserve"), Split(INCUMBENT, CHALLENGER, challenger_weight=5)) == []
    assert kserve.predictor_patch(Split(INCUMBENT, CHALLENGER, challenger_weight=5)) == {"canaryTrafficPercent": 5}
    assert not kserve.supports_shadow
    with pytest.raises(ShadowNotSupportedError):
        kserve.routes(_owner("kserve"), Split(INCUMBENT, CHALLENGER, shadow_percent=10))


@pytest.mark.parametrize(
    ("weight", "shadow", "challenger"), [(101, 0, CHALLENGER), (0, -1, CHALLENGER), (10, 0, None), (0, 5, None)]
)
def test_impossible_splits_are_refused(weight: int, shadow: int, challenger: Backend | None) -> None:
    with pytest.raises(ValueError, match=r"percent|needs a challenger"):
        Split(INCUMBENT, challenger, challenger_weight=weight, shadow_percent=shadow)
