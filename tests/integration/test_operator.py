"""The real operator on a real API server: each example gets its children, a release moves through its stages
with kubectl steward, traffic waits for readiness, rollbacks switch back at once, Git never sees drift, and
an operator killed at any point resumes to the same end state."""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from steward_harness.controlplane import ControlPlane
from steward_harness.dataplane import DataPlane
from steward_harness.gateways import Gateway
from steward_harness.kubectl import Kubectl
from steward_harness.operators import Operator
from steward_harness.predictors import Predictor
from tests.conftest import REPOSITORY
from tests.support import models
from tests.support.models import Trained
from tests.support.waiting import wait_until

CHILD_KINDS = ",".join(
    [
        "inferenceservices.serving.kserve.io",
        "httproutes.gateway.networking.k8s.io",
        "virtualservices.networking.istio.io",
        "cronjobs.batch",
    ]
)
KUBECTL_STEWARD = Path(sys.executable).parent / "kubectl-steward"


def example(name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((REPOSITORY / "examples" / name).read_text())
    return manifest


def version(manifest: dict[str, Any], number: str, digest: str | None = None) -> dict[str, Any]:
    """The same manifest releasing another model version, as a Git commit would."""
    changed = copy.deepcopy(manifest)
    model = changed["spec"]["model"]
    model["version"] = number
    model["bundle"] = model["bundle"].rstrip("/").rsplit("/", 1)[0] + f"/{number}/"
    model.pop("digest", None)
    if digest:
        model["digest"] = digest
    return changed


class Deployment:
    """One ModelDeployment in its own namespace, driven the way its users drive it: Git (server-side apply
    under a GitOps field manager) for spec, kubectl steward for commands."""

    def __init__(self, cluster: Kubectl, control_plane: ControlPlane, namespace: str, manifest: dict[str, Any]):
        self.cluster, self.control_plane, self.namespace = cluster, control_plane, namespace
        self.manifest = manifest
        self.name: str = manifest["metadata"]["name"]

    def apply(self, manifest: dict[str, Any] | None = None) -> None:
        self.manifest = manifest or self.manifest
        self._as_git("apply")

    def _as_git(self, verb: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """kubectl VERB --server-side of the manifest, as the GitOps tool that owns spec."""
        return self.cluster.run(
            verb,
            "--server-side",
            "--field-manager=gitops",
            "-n",
            self.namespace,
            "-f",
            "-",
            stdin=json.dumps(self.manifest),
            check=check,
        )

    def get(self) -> dict[str, Any]:
        body: dict[str, Any] = self.cluster.json("get", "modeldeployment", self.name, "-n", self.namespace)
        return body

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.get().get("status", {})
        return status

    def children(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.cluster.json(
            "get", CHILD_KINDS, "-n", self.namespace, "-l", f"steward.dev/model={self.name}"
        )["items"]
        return items

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [child for child in self.children() if child["kind"] == kind]

    def steward(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command, *rest = args
        result = subprocess.run(
            [
                str(KUBECTL_STEWARD),
                command,
                self.name,
                *rest,
                "-n",
                self.namespace,
                "--kubeconfig",
                str(self.control_plane.kubeconfig),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def wait(self, phase: str, **expected: Any) -> dict[str, Any]:
        """Wait until status is in `phase` with the given weights (incumbent=, challenger=, shadow=)."""

        def arrived() -> dict[str, Any] | None:
            status = self.status()
            weights = status.get("weights", {})
            if status.get("phase") == phase and all(weights.get(k) == v for k, v in expected.items()):
                return status
            return None

        return wait_until(arrived, timeout=30)

    def route_weights(self) -> list[int]:
        (route,) = self.of_kind("HTTPRoute")
        (rule,) = route["spec"]["rules"]
        return [backend["weight"] for backend in rule["backendRefs"]]

    def mirror_percent(self) -> int | None:
        (route,) = self.of_kind("HTTPRoute")
        (rule,) = route["spec"]["rules"]
        mirrors = [f["requestMirror"]["percent"] for f in rule.get("filters", []) if f["type"] == "RequestMirror"]
        return mirrors[0] if mirrors else None

    def services(self) -> list[str]:
        return sorted(child["metadata"]["name"] for child in self.of_kind("InferenceService"))

    def reasons(self) -> list[str]:
        events = self.cluster.json(
            "get", "events", "-n", self.namespace, "--field-selector", f"involvedObject.name={self.name}"
        )["items"]
        return [event["reason"] for event in sorted(events, key=lambda event: event["metadata"]["creationTimestamp"])]

    def assert_git_sees_no_drift(self) -> None:
        """Re-applying the manifest in Git changes nothing: the operator wrote no field Git owns."""
        before = self.get()["metadata"]["generation"]
        result = self._as_git("diff", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        self.apply()
        assert self.get()["metadata"]["generation"] == before


@pytest.fixture
def deploy(cluster: Kubectl, control_plane: ControlPlane, operated_namespace: str) -> Any:
    def start(manifest: dict[str, Any]) -> Deployment:
        deployment = Deployment(cluster, control_plane, operated_namespace, manifest)
        deployment.apply()
        return deployment

    return start


def test_an_online_model_gets_an_inference_service_and_a_route_owned_by_it(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    status = churn.wait("Stable", incumbent=100)
    uid = churn.get()["metadata"]["uid"]
    assert churn.services() == ["churn--2024-06-01"]
    for child in churn.children():
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"], owner["blockOwnerDeletion"]) == (
            "ModelDeployment",
            uid,
            True,
            True,
        )
    assert churn.route_weights() == [100]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Reconciling"]["status"] == "False"
    assert conditions["Stalled"]["status"] == "False"
    assert all(c["observedGeneration"] == 1 for c in conditions.values())
    assert status["observedGeneration"] == 1
    assert status["history"][0]["version"] == "2024-06-01"
    assert {"Deploying", "Ready"} <= set(churn.reasons())
    # No finalizer: deletion never waits for the operator, and children go with their owner.
    assert not churn.get()["metadata"].get("finalizers")
    churn.assert_git_sees_no_drift()


def test_a_batch_model_gets_a_cron_job_running_the_batch_command(deploy: Any) -> None:
    credit = deploy(example("batch.yaml"))
    credit.wait("Stable")
    (job,) = credit.of_kind("CronJob")
    assert job["metadata"]["name"] == "credit-limits--v12"
    assert job["spec"]["schedule"] == "30 2 * * *"
    assert job["spec"]["timeZone"] == "Europe/Berlin"
    assert job["spec"]["suspend"] is False
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["steward-predict"]
    assert container["args"][:3] == ["batch", "--bundle", "s3://models/credit-limits/v12/"]
    assert container["envFrom"] == [{"secretRef": {"name": "warehouse-reader"}}]
    credit.assert_git_sees_no_drift()


def test_streaming_is_refused_out_loud_not_ignored(deploy: Any) -> None:
    fraud = deploy(example("streaming.yaml"))

    def stalled() -> dict[str, Any] | None:
        conditions = {c["type"]: c for c in fraud.status().get("conditions", [])}
        return conditions.get("Stalled") if conditions.get("Stalled", {}).get("status") == "True" else None

    condition = wait_until(stalled)
    assert condition["reason"] == "StreamingNotSupported"
    assert fraud.children() == []


def test_a_release_moves_through_every_stage_with_kubectl_steward(deploy: Any) -> None:
    prices = deploy(example("full.yaml"))
    prices.wait("Stable")
    prices.apply(version(prices.manifest, "2024-08-01", "sha256:" + "1" * 64))
    prices.wait("Validating", incumbent=100, challenger=0, shadow=0)
    assert prices.services() == ["house-prices--2024-07-15", "house-prices--2024-08-01"]
    assert prices.route_weights() == [100, 0]
    assert prices.mirror_percent() is None
    (challenger,) = [s for s in prices.of_kind("InferenceService") if s["metadata"]["name"].endswith("08-01")]
    environment = {e["name"]: e["value"] for e in challenger["spec"]["predictor"]["containers"][0]["env"]}
    assert environment["STEWARD_BUNDLE_DIGEST"] == "sha256:" + "1" * 64
    prices.assert_git_sees_no_drift()

    prices.steward("promote")
    prices.wait("Shadowing", shadow=25)
    assert prices.mirror_percent() == 25
    assert prices.route_weights() == [100, 0]
    prices.assert_git_sees_no_drift()

    for weight in (5, 25, 50, 75):
        result = prices.steward("promote")
        assert "Canary" in result.stdout
        prices.wait("Canary", incumbent=100 - weight, challenger=weight, shadow=0)
        assert prices.route_weights() == [100 - weight, weight]
        assert prices.mirror_percent() is None
        prices.assert_git_sees_no_drift()

    shown = prices.steward("status").stdout
    assert "Canary, step 4 of 4" in shown
    assert "incumbent 25%, challenger 75%" in shown
    assert "https://runbooks.example.com/models/house-prices" in shown

    prices.steward("promote")
    status = prices.wait("Promoted", incumbent=100, challenger=0)
    assert status["incumbent"]["version"] == "2024-08-01"
    assert "challenger" not in status
    wait_until(lambda: prices.services() == ["house-prices--2024-08-01"])
    assert prices.route_weights() == [100]
    assert [(h["version"], h["outcome"]) for h in status["history"]] == [
        ("2024-07-15", "replaced"),
        ("2024-08-01", "serving"),
    ]
    assert {"ReleaseStarted", "Advanced", "TrafficShifted", "Promoted"} <= set(prices.reasons())
    history = prices.steward("history").stdout
    assert history.index("2024-08-01") < history.index("2024-07-15")
    prices.assert_git_sees_no_drift()


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


def test_abort_rolls_back_and_retry_releases_again(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    churn.apply(version(churn.manifest, "2024-07-01"))
    churn.wait("Validating")
    churn.steward("promote")
    churn.wait("Canary", challenger=5)

    churn.steward("abort")
    status = churn.wait("RolledBack", incumbent=100, challenger=0)
    assert status["rolledBack"]["version"] == "2024-07-01"
    stalled = {c["type"]: c for c in status["conditions"]}["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "RolledBack")
    wait_until(lambda: churn.services() == ["churn--2024-06-01"])
    assert churn.route_weights() == [100]
    churn.assert_git_sees_no_drift()

    refused = churn.steward("promote", check=False)
    assert refused.returncode == 1
    assert "no release is in progress" in refused.stderr

    churn.steward("retry")
    status = churn.wait("Validating")
    assert status["challenger"]["version"] == "2024-07-01"
    assert "rolledBack" not in status


def test_reapplying_a_recent_version_switches_back_at_once(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    original = copy.deepcopy(churn.manifest)
    churn.wait("Stable")
    churn.apply(version(churn.manifest, "2024-07-01"))
    churn.wait("Validating")
    churn.steward("promote", "--full")
    churn.wait("Promoted")

    churn.apply(original)  # git revert
    status = churn.wait("RolledBack", incumbent=100, challenger=0)
    wait_until(lambda: churn.status().get("incumbent", {}).get("version") == "2024-06-01")
    status = churn.status()
    assert "challenger" not in status
    assert [(h["version"], h["outcome"]) for h in status["history"]] == [
        ("2024-06-01", "replaced"),
        ("2024-07-01", "rolledBack"),
        ("2024-06-01", "serving"),
    ]
    reasons = churn.reasons()
    assert reasons.count("ReleaseStarted") == 1  # No new release for the known-good version.
    assert "RollingBack" in reasons
    wait_until(lambda: churn.services() == ["churn--2024-06-01"])
    assert {c["type"]: c["status"] for c in churn.status()["conditions"]}["Ready"] == "True"
    churn.assert_git_sees_no_drift()


def test_kubectl_steward_rollback_switches_to_the_previous_version(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    churn.apply(version(churn.manifest, "2024-07-01"))
    churn.wait("Validating")
    churn.steward("promote", "--full")
    churn.wait("Promoted")

    churn.steward("rollback")
    wait_until(lambda: churn.status().get("incumbent", {}).get("version") == "2024-06-01")
    status = churn.wait("RolledBack", incumbent=100)
    assert status["rolledBack"]["version"] == "2024-07-01"
    # Git still names 2024-07-01: Steward says so rather than release it again behind the user's back.
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Stalled"] == "RolledBack"
    churn.assert_git_sees_no_drift()
    assert churn.steward("rollback", "--to", "1999-01-01", check=False).returncode == 1


def test_a_spec_change_during_a_release_restarts_it_for_the_new_version(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    churn.apply(version(churn.manifest, "2024-07-01"))
    churn.wait("Validating")
    churn.steward("promote")
    churn.wait("Canary", challenger=5)
    churn.apply(version(churn.manifest, "2024-08-01"))
    status = churn.wait("Validating", incumbent=100, challenger=0)
    assert status["challenger"]["version"] == "2024-08-01"
    wait_until(lambda: churn.services() == ["churn--2024-06-01", "churn--2024-08-01"])
    assert "ReleaseRestarted" in churn.reasons()


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


def test_a_batch_challenger_scores_in_shadow_before_it_takes_over(deploy: Any) -> None:
    credit = deploy(example("batch.yaml"))
    credit.wait("Stable")
    credit.apply(version(credit.manifest, "v13"))
    credit.wait("Validating")
    jobs = {job["metadata"]["name"]: job for job in credit.of_kind("CronJob")}
    assert jobs["credit-limits--v13"]["spec"]["suspend"] is True
    credit.steward("promote")
    credit.wait("Shadowing", shadow=100)
    shadow = next(job for job in credit.of_kind("CronJob") if job["metadata"]["name"] == "credit-limits--v13")
    assert shadow["spec"]["suspend"] is False
    arguments = shadow["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert arguments[arguments.index("--output") + 1] == "s3://scores/credit-limits.shadow-v13/"
    credit.steward("promote")
    credit.wait("Promoted")
    wait_until(lambda: [job["metadata"]["name"] for job in credit.of_kind("CronJob")] == ["credit-limits--v13"])
    (job,) = credit.of_kind("CronJob")
    arguments = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert arguments[arguments.index("--output") + 1] == "s3://scores/credit-limits/"
    credit.assert_git_sees_no_drift()


def test_an_operator_killed_at_every_step_resumes_to_the_same_end(deploy: Any, operator: Operator) -> None:
    prices = deploy(example("full.yaml"))
    prices.wait("Stable")
    expected = [
        ("Validating", {"incumbent": 100, "challenger": 0, "shadow": 0}),
        ("Shadowing", {"incumbent": 100, "challenger": 0, "shadow": 25}),
        *[("Canary", {"incumbent": 100 - w, "challenger": w, "shadow": 0}) for w in (5, 25, 50, 75)],
        ("Promoted", {"incumbent": 100, "challenger": 0, "shadow": 0}),
    ]
    shuffle = random.Random(7)  # noqa: S311 -- timing jitter, not secrets
    try:
        for index, (phase, weights) in enumerate(expected):
            killed_before = index % 2 == 0
            if killed_before:
                operator.kill()  # The change lands while no operator runs.
            if index == 0:
                prices.apply(version(prices.manifest, "2024-08-01"))
            else:
                prices.steward("promote", "--no-wait")
            if not killed_before:
                # Killed while it works on the change: anywhere from before it reads it to after it wrote.
                time.sleep(shuffle.uniform(0.0, 0.3))
                operator.kill()
            operator.start()
            prices.wait(phase, **weights)
            _assert_consistent(prices)
    finally:
        if operator._process is None:
            operator.start()
    wait_until(lambda: prices.services() == ["house-prices--2024-08-01"])
    assert prices.route_weights() == [100]
    prices.assert_git_sees_no_drift()


def _assert_consistent(deployment: Deployment) -> None:
    """No duplicate children, and the route carries exactly the split status records."""

    def settled() -> bool:
        status = deployment.status()
        live = {status["incumbent"]["version"], *([status["challenger"]["version"]] if "challenger" in status else [])}
        names = deployment.services()
        expected = sorted(f"{deployment.name}--{v}" for v in live)
        return names == expected and len(deployment.of_kind("HTTPRoute")) == 1

    wait_until(settled, timeout=30)
    status = deployment.status()
    weights = status["weights"]
    route = deployment.route_weights()
    if "challenger" in status:
        assert route == [weights["incumbent"], weights["challenger"]]
    else:
        assert route == [100]
    assert (deployment.mirror_percent() or 0) == (weights["shadow"] if "challenger" in status else 0)


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
        predictor = wait_until(lambda: data_plane.predictor(namespace, "churn--v2"), timeout=60)
        reason = wait_until(lambda: predictor.ready()[1], timeout=60)
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


def test_the_operator_exports_its_metrics(deploy: Any, operator: Operator) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    labels = f'name="{churn.name}",namespace="{churn.namespace}"'

    def scraped() -> str | None:
        text = operator.metrics()
        return text if f'{{{labels},phase="Stable"}} 1.0' in text else None

    text = wait_until(scraped)
    assert 'steward_operator_reconciles_total{result="ok"}' in text
    assert "steward_operator_reconcile_duration_seconds_bucket" in text
    assert f'steward_operator_traffic_ratio{{{labels},role="incumbent"}} 1.0' in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_pause_holds_a_new_version_back_until_resume(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    churn.steward("pause")
    assert churn.status()["paused"] is True
    churn.apply(version(churn.manifest, "2024-07-01"))

    def held() -> dict[str, Any] | None:
        status = churn.status()
        reconciling = {c["type"]: c for c in status.get("conditions", [])}.get("Reconciling", {})
        return status if reconciling.get("reason") == "Paused" else None

    status = wait_until(held)
    assert status["phase"] == "Stable"
    assert "challenger" not in status
    assert churn.services() == ["churn--2024-06-01"]
    assert "paused" in churn.steward("status").stdout
    churn.steward("resume")
    status = churn.wait("Validating")
    assert status["challenger"]["version"] == "2024-07-01"


def test_deleting_a_model_deployment_lets_garbage_collection_remove_its_children(deploy: Any) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    uid = churn.get()["metadata"]["uid"]
    children = churn.children()
    assert {child["kind"] for child in children} == {"InferenceService", "HTTPRoute"}
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == uid
    # Nothing (no finalizer of Steward's) holds the deletion up.
    churn.cluster.run("delete", "modeldeployment", churn.name, "-n", churn.namespace, "--wait=true", "--timeout=10s")
    # Kubernetes' garbage collector removes every child that names the deleted owner...
    wait_until(lambda: not churn.children(), timeout=30)
    # ...and the operator brings nothing back for a deleted ModelDeployment.
    time.sleep(2)
    assert not churn.children()


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


def test_model_deployments_whose_names_and_versions_join_alike_get_children_of_their_own(deploy: Any) -> None:
    first = version({**example("online.yaml"), "metadata": {"name": "case1"}}, "v1-0")
    second = version({**example("online.yaml"), "metadata": {"name": "case1-v1"}}, "0")
    case1, case1_v1 = deploy(first), deploy(second)
    case1.wait("Stable", incumbent=100)
    case1_v1.wait("Stable", incumbent=100)

    assert case1.services() == ["case1--v1-0"]
    assert case1_v1.services() == ["case1-v1--0"]
    generations = {child["metadata"]["name"]: child["metadata"]["generation"] for child in case1.children()}
    time.sleep(12)  # Two resyncs of each: a fight over a child would have rewritten it by now.
    assert {child["metadata"]["name"]: child["metadata"]["generation"] for child in case1.children()} == generations


def test_a_child_someone_else_holds_is_neither_adopted_nor_overwritten(deploy: Any, cluster: Kubectl) -> None:
    other = deploy({**example("online.yaml"), "metadata": {"name": "other"}})
    other.wait("Stable", incumbent=100)
    squatter = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "case2--v1",
            "namespace": other.namespace,
            "ownerReferences": [
                {
                    "apiVersion": "steward.dev/v1alpha1",
                    "kind": "ModelDeployment",
                    "name": "other",
                    "uid": other.get()["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "theirs:1"}]}},
    }
    cluster.run("apply", "-f", "-", stdin=json.dumps(squatter))
    before = cluster.json("get", "inferenceservice", "case2--v1", "-n", other.namespace)

    case2 = deploy(version({**example("online.yaml"), "metadata": {"name": "case2"}}, "v1"))

    def stalled() -> dict[str, Any] | None:
        conditions = {c["type"]: c for c in case2.status().get("conditions", [])}
        return conditions.get("Stalled") if conditions.get("Stalled", {}).get("status") == "True" else None

    condition = wait_until(stalled)
    assert condition["reason"] == "ChildOwnedElsewhere"
    assert "InferenceService case2--v1 already exists and belongs to ModelDeployment other" in condition["message"]
    assert "ChildOwnedElsewhere" in wait_until(
        lambda: case2.reasons() if "ChildOwnedElsewhere" in case2.reasons() else None
    )
    time.sleep(6)  # A resync later, still untouched, and told only once.
    assert case2.reasons().count("ChildOwnedElsewhere") == 1
    assert wait_until(stalled)["lastTransitionTime"] == condition["lastTransitionTime"]
    after = cluster.json("get", "inferenceservice", "case2--v1", "-n", other.namespace)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"]["ownerReferences"] == before["metadata"]["ownerReferences"]
    assert after["spec"] == before["spec"]

    # Once the name is free, the ModelDeployment takes it and serves.
    cluster.run("delete", "inferenceservice", "case2--v1", "-n", other.namespace)
    case2.wait("Stable", incumbent=100)
    assert case2.services() == ["case2--v1"]


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
