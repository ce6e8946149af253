"""KServe's own controller turns the InferenceService Steward plans into a Deployment and a Service whose pod runs
the predictor image on a real bundle, and Traefik routes to it through the routes KServe writes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from steward_harness import addons, images
from steward_harness.clusters import LocalCluster
from steward_harness.kubectl import Kubectl
from steward_operator import specs
from steward_operator.children import Owner
from steward_operator.modes import Live, online
from tests.support import models
from tests.support.waiting import wait_until

NAMESPACE = "kserve-check"
MODEL = "tumours"


def _model_deployment(kubectl: Kubectl, bundle: str) -> tuple[str, specs.ModelDeploymentSpec]:
    """A ModelDeployment for the children to belong to (no operator runs here, so it stays as applied); its uid."""
    manifest = {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL, "namespace": NAMESPACE},
        "spec": {
            "owner": {"team": "ml", "contact": "ml@example.com", "runbook": "https://runbooks.example.com/tumours"},
            "model": {"version": "v1", "bundle": bundle},
            "serving": {"online": {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}},
        },
    }
    kubectl.run("apply", "--server-side", "-f", "-", stdin=json.dumps(manifest))
    stored = kubectl.json("get", "modeldeployment", MODEL, "-n", NAMESPACE)
    return str(stored["metadata"]["uid"]), specs.ModelDeployment.model_validate(stored).spec


@pytest.fixture(scope="module")
def served(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any]:
    """Steward's InferenceService for v1 of a real bundle, applied and Ready; and a row the bundle would score."""
    kubectl = local_cluster.kubectl
    kubectl.run("create", "namespace", NAMESPACE)
    trained = models.breast_cancer(tmp_path_factory.mktemp("train"), "v1")
    claim = local_cluster.share_bundles(NAMESPACE, {"v1": trained.path})
    uid, spec = _model_deployment(kubectl, f"{claim}/v1")
    owner = Owner(name=MODEL, namespace=NAMESPACE, uid=uid, traffic=spec.rollout.traffic)
    service = online.inference_service(owner, spec, Live("v1", f"{claim}/v1"))
    service["spec"]["predictor"]["containers"][0]["image"] = images.image_references()["predictor"]
    kubectl.run("apply", "--server-side", "--field-manager=steward", "-f", "-", stdin=json.dumps(service))
    name = service["metadata"]["name"]

    def ready() -> dict[str, Any] | None:
        found: dict[str, Any] = kubectl.json("get", "inferenceservice", name, "-n", NAMESPACE)
        conditions = {c["type"]: c["status"] for c in found.get("status", {}).get("conditions", [])}
        return found if conditions.get("Ready") == "True" else None

    return wait_until(ready, timeout=240, interval=2), models.records(trained.x_test.iloc[:1])[0]


def test_kserve_makes_a_deployment_and_a_service_of_steward_s_inference_service(
    local_cluster: LocalCluster, served: tuple[dict[str, Any], Any]
) -> None:
    kubectl = local_cluster.kubectl
    name = served[0]["metadata"]["name"]
    deployment = kubectl.json("get", "deployment", f"{name}-predictor", "-n", NAMESPACE)
    (container,) = (c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "kserve-container")
    assert container["image"] == images.image_references()["predictor"]
    # KServe's pod webhook mounted the claim where the predictor reads its bundle.
    (pod,) = kubectl.json("get", "pods", "-n", NAMESPACE, "-l", f"serving.kserve.io/inferenceservice={name}")["items"]
    (running,) = (c for c in pod["spec"]["containers"] if c["name"] == "kserve-container")
    (mount,) = (m for m in running["volumeMounts"] if m["mountPath"] == "/mnt/models")
    (volume,) = (v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert (volume["persistentVolumeClaim"]["claimName"], mount.get("subPath"), mount.get("readOnly")) == (
        "bundles",
        "v1",
        True,
    )
    assert kubectl.json("get", "service", f"{name}-predictor", "-n", NAMESPACE)["spec"]["ports"]
    # KServe's controller owns them, and Steward's ModelDeployment owns the InferenceService.
    (owner,) = deployment["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("InferenceService", name)


def test_the_predictor_answers_through_traefik_on_kserve_s_route(
    local_cluster: LocalCluster, served: tuple[dict[str, Any], Any]
) -> None:
    kubectl = local_cluster.kubectl
    gateway = kubectl.json("get", "service", "traefik", "-n", addons.TRAEFIK_NAMESPACE)["spec"]["clusterIP"]
    service, row = served
    host = service["status"]["url"].removeprefix("http://")
    request = urllib.request.Request(
        f"http://{gateway}/v1/models/{MODEL}:predict",
        data=json.dumps({"instances": [row]}).encode(),
        headers={"Host": host, "Content-Type": "application/json"},
    )

    def answered() -> dict[str, Any] | None:
        # From the host, as a client outside the cluster: the Service address routes onto the node's bridge.
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 -- the local gateway
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as error:
            if error.code == 404:  # KServe says Ready once Traefik accepts the route, a moment before it serves it
                return None
            raise

    assert len(wait_until(answered, timeout=60, interval=1)["predictions"]) == 1
