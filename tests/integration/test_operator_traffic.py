"""The real operator on a real API server, each ModelDeployment driven as its users drive it (Git for spec, kubectl
steward for commands): traffic waits until the challenger is ready and leaves one that stops answering, real
predictors gate their readiness on their bundle, a gateway's traffic follows the routes the operator writes, and
other traffic providers split traffic their own way."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from steward_harness.dataplane import DataPlane
from steward_harness.gateways import Gateway
from steward_harness.kubectl import Kubectl
from steward_harness.predictors import Predictor
from tests.support import models
from tests.support.deployments import example, version
from tests.support.models import Trained
from tests.support.waiting import PATIENCE, wait_until


def test_traffic_waits_until_the_challenger_is_ready(deploy: Any, data_plane: DataPlane) -> None:
    prices = deploy(example("full.yaml"))
    prices.wait("Stable")
    data_plane.held.add("2024-09-01")
    try:
        prices.apply(version(prices.manifest, "2024-09-01"))
        prices.wait("Validating")
        prices.steward("promote")
        status = prices.wait("Shadowing", shadow=0)
        assert prices.mirror_percent() is None
        ready = {c["type"]: c for c in status["conditions"]}["Reconciling"]
        assert "waiting for 2024-09-01 to become ready" in ready["message"]
        refused = prices.steward("promote", "--full", check=False)
        assert refused.returncode == 1
        assert "not ready" in refused.stderr
        assert prices.status()["phase"] == "Shadowing"
    finally:
        data_plane.held.discard("2024-09-01")
    prices.wait("Shadowing", shadow=25)
    wait_until(lambda: prices.mirror_percent() == 25)


def test_a_challenger_that_stops_answering_loses_its_traffic_until_it_is_back(
    deploy: Any, cluster: Kubectl, data_plane: DataPlane
) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    churn.apply(version(churn.manifest, "v2"))
    churn.wait("Validating")
    churn.steward("promote")
    churn.wait("Canary", incumbent=95, challenger=5)
    wait_until(lambda: churn.route_weights() == [95, 5])

    # Its InferenceService is deleted; the operator recreates it, and it is not ready for a while.
    data_plane.held.add("v2")
    try:
        cluster.run("delete", "inferenceservice", "churn--v2", "-n", churn.namespace)
        status = churn.wait("Canary", incumbent=100, challenger=0)
        wait_until(lambda: churn.route_weights() == [100, 0])
        assert "ChallengerUnavailable" in churn.reasons()
        message = {c["type"]: c for c in status["conditions"]}["Reconciling"]["message"]
        assert "waiting for v2 to become ready before traffic moves" in message
    finally:
        data_plane.held.discard("v2")
    churn.wait("Canary", incumbent=95, challenger=5)
    wait_until(lambda: churn.route_weights() == [95, 5])


def test_the_predictor_gates_readiness_on_its_bundle(
    deploy: Any, data_plane: DataPlane, operated_namespace: str, trained: dict[str, Trained], tmp_path: Path
) -> None:
    """With real predictors behind the InferenceServices, a challenger whose bundle does not match its pinned
    digest never becomes ready, so it never receives traffic; a sound one does."""
    namespace = operated_namespace
    data_plane.predictor_namespaces.add(namespace)
    manifest = example("online.yaml")
    manifest["spec"]["model"] = {"version": "v1", "bundle": str(trained["breast-cancer"].path)}
    manifest["spec"]["rollout"] = {"validation": {"enabled": False}, "shadow": {"percent": 100}}
    try:
        churn = deploy(manifest)
        churn.wait("Stable")
        tampered = version(churn.manifest, "v2", "sha256:" + "0" * 64)
        tampered["spec"]["model"]["bundle"] = str(models.breast_cancer(tmp_path, "v2").path)
        churn.apply(tampered)
        churn.wait("Shadowing", shadow=0)
        predictor = wait_until(lambda: data_plane.predictor(namespace, "churn--v2"))
        reason = wait_until(lambda: predictor.ready()[1], timeout=2 * PATIENCE)
        assert not predictor.ready()[0]
        assert "digest" in reason
        assert churn.status()["weights"]["shadow"] == 0

        sound = version(churn.manifest, "v3")
        sound["spec"]["model"]["bundle"] = str(models.breast_cancer(tmp_path, "v3").path)
        churn.apply(sound)
        status = churn.wait("Shadowing", shadow=100)
        assert status["challenger"]["version"] == "v3"
        served = data_plane.predictor(namespace, "churn--v3")
        assert served is not None
        assert served.ready()[0]
    finally:
        data_plane.predictor_namespaces.discard(namespace)


def test_the_gateway_follows_the_routes_the_operator_writes(
    deploy: Any, data_plane: DataPlane, operated_namespace: str, trained: dict[str, Trained], tmp_path: Path
) -> None:
    """Real predictors behind a gateway that honours HTTPRoute weights and mirrors: what the operator writes is
    what traffic does."""
    namespace = operated_namespace
    data_plane.predictor_namespaces.add(namespace)
    manifest = example("online.yaml")
    manifest["spec"]["model"] = {"version": "v1", "bundle": str(trained["breast-cancer"].path)}
    manifest["spec"]["rollout"] = {
        "validation": {"enabled": False},
        "shadow": {"percent": 50},
        "canary": {"steps": [25]},
    }
    body = json.dumps({"instances": models.records(trained["breast-cancer"].x_test.iloc[:1])}).encode()
    churn = deploy(manifest)
    gateway = Gateway(data_plane, seed=3).start()
    try:
        churn.wait("Stable")
        wait_until(lambda: ("churn" in {name for _, name in data_plane.routes}) or None)

        def send(count: int) -> dict[str, int]:
            answered: dict[str, int] = {}
            for _ in range(count):
                request = urllib.request.Request(  # noqa: S310 -- loopback
                    f"{gateway.url}/{namespace}/churn/v1/models/churn:predict",
                    data=body,
                    method="POST",
                    headers={"content-type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 -- loopback
                    backend = response.headers["x-steward-backend"]
                    answered[backend] = answered.get(backend, 0) + 1
            return answered

        assert send(20) == {"churn--v1-predictor": 20}
        second = version(churn.manifest, "v2")
        second["spec"]["model"]["bundle"] = str(models.breast_cancer(tmp_path, "v2").path)
        churn.apply(second)
        churn.wait("Shadowing", shadow=50)
        wait_until(
            lambda: data_plane.routes.get((namespace, "churn"), {}).get("spec", {}).get("rules", [{}])[0].get("filters")
        )
        shadowed = data_plane.predictor(namespace, "churn--v2")
        assert shadowed is not None
        before = _requests_served(shadowed)
        assert send(200) == {"churn--v1-predictor": 200}
        # Mirrored copies are sent off on the side: count them once they stop arriving.
        counts = [-1, _requests_served(shadowed)]
        while counts[-1] != counts[-2]:
            time.sleep(0.5)
            counts.append(_requests_served(shadowed))
        mirrored = counts[-1] - before
        assert 60 <= mirrored <= 140  # 50 % of 200, binomial: mean 100, sd 7

        churn.steward("promote")
        churn.wait("Canary", challenger=25)
        wait_until(
            lambda: (
                [b["weight"] for b in data_plane.routes[namespace, "churn"]["spec"]["rules"][0]["backendRefs"]]
                == [75, 25]
            )
        )
        answered = send(400)
        assert 60 <= answered.get("churn--v2-predictor", 0) <= 140  # 25 % of 400, binomial: mean 100, sd 9
    finally:
        gateway.stop()
        data_plane.predictor_namespaces.discard(namespace)


def _requests_served(predictor: Predictor) -> int:
    status, text = predictor.get("/metrics")
    assert status == 200
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("steward_predictor_requests_total{")
        )
    )


@pytest.mark.parametrize("provider", ["istio", "kserve"])
def test_other_traffic_providers_split_traffic_their_own_way(deploy: Any, provider: str) -> None:
    manifest = example("online.yaml")
    manifest["spec"]["rollout"] = {"traffic": {"provider": provider}, "validation": {"enabled": False}}
    churn = deploy(manifest)
    churn.wait("Stable")
    churn.apply(version(churn.manifest, "2024-07-01"))
    churn.wait("Canary", challenger=5)
    if provider == "istio":
        (service,) = churn.of_kind("VirtualService")
        weights = [destination["weight"] for destination in service["spec"]["http"][0]["route"]]
        assert weights == [95, 5]
        assert churn.of_kind("HTTPRoute") == []
    else:
        # One InferenceService: KServe splits between its revisions, the challenger's being the newest.
        (service,) = churn.of_kind("InferenceService")
        assert service["metadata"]["name"] == "churn"
        assert service["metadata"]["labels"]["steward.dev/version"] == "2024-07-01"
        assert service["spec"]["predictor"]["canaryTrafficPercent"] == 5
        assert churn.of_kind("HTTPRoute") == churn.of_kind("VirtualService") == []
        churn.steward("promote", "--full")
        churn.wait("Promoted")
        (service,) = churn.of_kind("InferenceService")
        assert "canaryTrafficPercent" not in service["spec"]["predictor"]
