"""The release story on the node, through pods KServe makes and routes Traefik serves: the chart installed with
helm and checked with `helm test`; a Prometheus finding the predictors by the chart's pod annotations; v1 serves;
v2 is validated, shadowed and canaried, its pod killed mid-canary, and promoted on evidence; a bad v3 is rolled
back; a retraining Job from the template runs to completion and is recorded; the ModelDeployment is deleted and
garbage collection takes everything it made. At every moment, Argo CD's health script and kstatus read the live
object. The tests run in this order, one chapter each, on one story."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from steward_harness import addons, demo, images
from steward_harness.clusters import LocalCluster
from steward_harness.prometheus import Prometheus
from steward_harness.timelines import Moment
from steward_operator import children
from steward_operator.evidence import Gateway
from steward_operator.evidence.prometheus import Prometheus as Evidence
from steward_operator.modes import online
from tests.conftest import REPOSITORY, Helm
from tests.e2e.conftest import ONLINE_NAMESPACE
from tests.support import queries
from tests.support.gitops import KSTATUS_OF, argocd_health, kstatus_verdicts
from tests.support.waiting import wait_until

NAMESPACE = ONLINE_NAMESPACE
HOST = f"{demo.NAME}.{NAMESPACE}.example.com"
TRAFFIC = {"provider": "traefik", "gateway": f"{addons.KSERVE_NAMESPACE}/{addons.GATEWAY}", "hostnames": [HOST]}
CHAPTER = 300.0
# Small requests: the node has two cores, and a predictor asks KServe's default of one each unless told.
SERVING = {
    "mode": "online",
    "online": {"minReplicas": 1, "maxReplicas": 1, "resources": {"requests": {"cpu": "100m", "memory": "384Mi"}}},
}
KUBECTL_STEWARD = Path(sys.executable).parent / "kubectl-steward"
OUTPUT = REPOSITORY / "build" / "e2e"
"""Where the story's timeline and the answers clients saw are written."""


def _retraining(image: str) -> dict[str, Any]:
    """spec.retraining: a Job that runs in `image` and succeeds, on request only."""
    container = {"name": "train", "image": image, "command": ["python", "-c", "print('retrained')"]}
    return {
        "cooldown": "1h",
        "jobTemplate": {
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}
        },
    }


@dataclass
class World:
    cluster: LocalCluster
    story: demo.Story
    bundles: dict[str, str]
    rows: list[dict[str, Any]]
    traffic: demo.Traffic | None = None
    findings: list[str] = field(default_factory=list)
    """What the story measured, in words, for story.md."""

    def apply(self, version: str, label: str, why: str, **spec: Any) -> None:
        self.story.apply(version, self.bundles[version], label, why, serving=SERVING, **spec)

    def steward(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(KUBECTL_STEWARD), *args, "-n", NAMESPACE, f"--kubeconfig={self.cluster.plane.kubeconfig}"]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    def events(self, since: datetime | None = None) -> set[str]:
        """The reasons of the Events about the ModelDeployment, of those last seen at or after `since` if given."""
        found = self.cluster.kubectl.json(
            "get", "events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={demo.NAME}"
        )
        # Events are stamped to the second.
        after = "" if since is None else since.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {event["reason"] for event in found["items"] if (event.get("lastTimestamp") or "") >= after}


@pytest.fixture(scope="module")
def world(
    local_cluster: LocalCluster, prometheus: Prometheus, chart: Helm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    models = demo.train(tmp_path_factory.mktemp("bundles"))
    claim = local_cluster.share_bundles(NAMESPACE, models.bundles)
    story = demo.Story(local_cluster.plane, prometheus, local_cluster.kubectl, namespace=NAMESPACE, traffic=TRAFFIC)
    world = World(local_cluster, story, {version: f"{claim}/{version}" for version in models.bundles}, models.rows)
    yield world
    answers = []
    if world.traffic is not None:
        world.traffic.stop()
        answers = sorted(world.traffic.answered.items())
    # What happened when, and what clients saw, for whoever reads the run afterwards.
    lines = "".join(f"| {version} | {code} | {count} |\n" for (version, code), count in answers)
    answered = f"\n\n| answered by | status | requests |\n|---|---|---|\n{lines}"
    found = "".join(f"- {finding}\n" for finding in world.findings)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "story.md").write_text(story.timeline.markdown() + answered + (f"\n\n{found}" if found else ""))


def _pods(world: World, version: str) -> list[dict[str, Any]]:
    selector = f"serving.kserve.io/inferenceservice={children.child_name(demo.NAME, version)}"
    found: list[dict[str, Any]] = world.cluster.kubectl.json("get", "pods", "-n", NAMESPACE, "-l", selector)["items"]
    return found


def _settled_pod(world: World, version: str) -> dict[str, Any]:
    """The version's one pod, ready, once any rollout has settled: pinning a version's digest changes its pod
    template, so KServe rolls its Deployment once, and for a while there are two."""

    def settled() -> dict[str, Any] | None:
        pods = _pods(world, version)
        if len(pods) != 1 or pods[0]["metadata"].get("deletionTimestamp"):
            return None
        conditions = {c["type"]: c["status"] for c in pods[0].get("status", {}).get("conditions", [])}
        return pods[0] if conditions.get("Ready") == "True" else None

    return wait_until(settled, timeout=120, interval=1)


def test_helm_test_passes_on_the_node(chart: Helm) -> None:
    tested = chart("test", "steward", "--timeout=100s")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "Phase:          Succeeded" in tested.stdout


def test_v1_serves_through_kserve_s_pods_and_traefik(world: World) -> None:
    world.apply("v1", "apply v1", "v1 is applied: the first version serves")
    world.story.until("v1 serving", demo.ready_with("v1"), CHAPTER)
    gateway = world.cluster.kubectl.json("get", "service", "traefik", "-n", addons.TRAEFIK_NAMESPACE)["spec"]
    url = f"http://{gateway['clusterIP']}/v1/models/{demo.NAME}:predict"
    demo.wait_for_route(url, HOST, timeout=60)
    world.traffic = demo.Traffic(url, world.rows, host=HOST).start()
    wait_until(lambda: world.traffic and world.traffic.answered.get(("v1", 200), 0) >= 50, timeout=60)
    pod = _settled_pod(world, "v1")
    # KServe made the pod; Prometheus found it by its annotations, with the labels the operator asks for.
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    query = f'steward_predictor_ready{{namespace="{NAMESPACE}",pod="{pod["metadata"]["name"]}"}}'
    assert wait_until(lambda: queries.instant(world.story.prometheus, query), timeout=30)


def test_v2_is_validated_shadowed_canaried_and_promoted_though_its_pod_dies_mid_canary(world: World) -> None:
    story = world.story
    world.apply("v2", "apply v2", "v2 is applied: better held-out results")
    story.until("v2 in canary", demo.phase("Canary", challenger="v2"), CHAPTER)
    pod = _settled_pod(world, "v2")
    assert world.traffic is not None
    # Once clients get v2's answers, Traefik has loaded the canary's split, and with it the end of the mirror.
    shadowed = world.traffic.answered.get(("v2", 200), 0)
    wait_until(lambda: world.traffic and world.traffic.answered.get(("v2", 200), 0) >= shadowed + 20, timeout=60)
    before, killed = dict(world.traffic.answered), datetime.now(UTC)
    # Every rollout so far was hitless: pinning v1's and v2's digests rolled their Deployments, and each stopping pod
    # answered on until Traefik had taken it out.
    assert not _from_gateway({}, before), before
    print(f"\n[{story.elapsed():5.0f} s] v2's pod {pod['metadata']['name']} is killed mid-canary", flush=True)
    world.cluster.kubectl.run("delete", "pod", pod["metadata"]["name"], "-n", NAMESPACE, "--grace-period=0", "--force")
    # KServe's Deployment starts another pod; until it is ready, the challenger takes no traffic.
    story.until("v2 out of the split", lambda body: "ChallengerUnavailable" in world.events(since=killed), 120)
    story.until("v2 promoted", demo.phase("Promoted", incumbent="v2"), CHAPTER)
    phases = [moment.phase for moment in story.timeline.moments]
    assert {"Validating", "Shadowing", "Canary", "Promoted"} <= set(phases)
    assert world.traffic is not None
    answered = world.traffic.answered
    assert answered.get(("v2", 200), 0) > 0, "no client was ever answered by v2"
    # The route never went away: a 404 would be Traefik dropping it while v2 had no pod.
    assert not [answer for answer in answered if answer[1] == 404], answered
    # Traefik itself mirrored every request in shadow and split the last canary step as the operator asked, by its
    # own per-Service counts (a mirrored request counts against the mirror's Service).
    moments = story.timeline.moments
    shadow, canary = _last_stretch(moments, (100, 0, 100), "Canary")
    mirrored = _served_by_traefik(story, story.begun + shadow.at + 5, story.begun + canary.at - 1)
    assert 0.9 < mirrored["v2"] / mirrored["v1"] < 1.1, mirrored
    step, promoted = _last_stretch(moments, (50, 50, 0), "Promoted")
    served = _served_by_traefik(story, story.begun + step.at + 5, story.begun + promoted.at - 1)
    assert 0.4 < served["v2"] / (served["v1"] + served["v2"]) < 0.6, served
    world.findings.append(f"Traefik's counts: shadow {_shares(mirrored)}, the 50 % step {_shares(served)}.")
    _gateway_counted_what_clients_got(world, before, killed)


def _gateway_counted_what_clients_got(world: World, before: dict[tuple[str, int], int], since: datetime) -> None:
    """The errors Traefik answered for v2's dead pod, which no predictor counts, as the operator reads them, from the
    kill until now, against the clients' own tally of the gateway's answers (no version header). The gateway may
    count more than clients got: a mirrored request still in flight to the dead pod fails too."""
    assert world.traffic is not None
    # Every request sent around the kill has been answered or given up by now: clients wait at most 30 s.
    settled = since + timedelta(seconds=35)
    wait_until(lambda: datetime.now(UTC) >= settled, timeout=40, interval=1)
    end, after = datetime.now(UTC), dict(world.traffic.answered)
    time.sleep(2)  # Prometheus scrapes every second: every sample up to `end` is in.
    grew = _from_gateway(before, after)
    from_gateway = sum(count for (version, code), count in grew.items() if version == "?" and code >= 500)
    gave_up = grew.get(("unreachable", 0), 0)
    backend = online.backend(demo.NAME, NAMESPACE, "v2")
    gateway = Gateway("traefik", NAMESPACE, backend.service, backend.port)
    window = Evidence(world.story.prometheus.url).window(
        demo.NAME, "v2", since, end, namespace=NAMESPACE, gateway=gateway
    )
    counts = asyncio.run(window)
    world.findings.append(
        f"Around the kill of v2's pod, Traefik answered {counts.gateway_errors} of v2's"
        f" {counts.gateway_requests} requests with a 5xx and v2's predictors {counts.errors} of {counts.requests};"
        f" clients got {from_gateway} 5xx answers from the gateway and gave up on {gave_up} requests."
    )
    print(f"\n{world.findings[-1]}", flush=True)
    # Traefik's series for v2's Service is found by the name the operator gives it.
    assert counts.gateway_requests, counts
    assert counts.errors == 0, counts
    assert counts.gateway_errors is not None
    # What Traefik answered while v2's endpoint was still listed (a 502 for a refused connection) it counts on v2's
    # Service; once the endpoint is gone it answers 503 with no server and counts that on the route, for no version.
    # Which of the two the kill produces depends on how soon the endpoint goes: both have been seen here.
    if counts.gateway_errors < from_gateway:
        world.findings.append(
            f"{from_gateway - counts.gateway_errors} of the gateway's 5xx answers were counted on the route, not on"
            " v2's Service: no version is charged with them."
        )


def test_a_bad_v3_is_rolled_back(world: World) -> None:
    story = world.story
    assert world.traffic is not None
    before = dict(world.traffic.answered)
    world.apply("v3", "apply v3", "v3 is applied: new feature code with a bug")
    body = story.until("v3 rolled back", demo.phase("RolledBack", incumbent="v2", rolledBack="v3"), CHAPTER)
    # v3's pods and v1's stopped without a client getting an answer from the gateway rather than a version.
    time.sleep(online.DRAIN_SECONDS + 2)
    assert not _from_gateway(before, world.traffic.answered), world.traffic.answered
    # v3 fails some requests and shifts its predictions: whichever guardrail sees it first rolls it back.
    analysis = body["status"]["lastAnalysis"]
    assert analysis["decision"] == "rollback", analysis
    assert re.match(r"guardrail (errorRate|predictionShift) failed", analysis["rule"]), analysis


def test_a_retraining_job_runs_to_completion_and_is_recorded(world: World) -> None:
    story = world.story
    # The predictor's image: the only Python on the node.
    retraining = _retraining(images.image_references()["predictor"])
    world.apply("v2", "revert to v2", "Git is reverted to v2, with a retraining Job", retraining=retraining)
    story.until("v2 Ready again", demo.ready_with("v2"), CHAPTER)
    asked = world.steward("retrain", demo.NAME)
    assert asked.returncode == 0, asked.stdout + asked.stderr

    def finished(body: dict[str, Any]) -> bool:
        runs = body.get("status", {}).get("retrainings", [])
        return bool(runs) and runs[-1]["outcome"] != "running"

    body = story.until("the retraining Job finished", finished, 180)
    run = body["status"]["retrainings"][-1]
    assert (run["reason"], run["outcome"], run["version"]) == ("manual", "succeeded", "v2")
    assert "RetrainingSucceeded" in world.events()


def test_deleting_the_model_deployment_removes_everything_it_made(world: World) -> None:
    if world.traffic is not None:
        world.traffic.stop()
    kubectl = world.cluster.kubectl
    kubectl.run("delete", "modeldeployment", demo.NAME, "-n", NAMESPACE, "--wait=false")
    # What the operator made, what KServe made of it, and the commands sent: all owned, so all collected.
    kinds = "inferenceservices,traefikservices,httproutes,deployments,services,jobs,pods,modelcommands"
    try:
        wait_until(lambda: not kubectl.json("get", kinds, "-n", NAMESPACE)["items"], timeout=180, interval=2)
    except TimeoutError:
        left = kubectl.run("get", kinds, "-n", NAMESPACE, "-o", "name").stdout
        pytest.fail(f"left in {NAMESPACE} after the ModelDeployment was deleted:\n{left}")


def _expected_health(body: dict[str, Any]) -> str | None:
    """What Argo CD must say at the story's landmarks, once the operator acted on the generation: a release under
    way is Progressing, a promoted version serving is Healthy, a rolled-back version still in Git is Degraded.
    None elsewhere."""
    status = body.get("status") or {}
    if status.get("observedGeneration") != body["metadata"]["generation"]:
        return None
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
    wanted = body["spec"]["model"]["version"]
    if status.get("phase") in {"Validating", "Shadowing", "Canary"}:
        return "Progressing"
    if status.get("phase") == "Promoted" and ready:
        return "Healthy"
    if status.get("phase") == "RolledBack" and (status.get("rolledBack") or {}).get("version") == wanted:
        return "Degraded"
    return None


def test_argo_cd_and_kstatus_agree_on_every_moment_of_the_story(world: World) -> None:
    seen = world.story.seen
    verdicts = kstatus_verdicts(seen)
    landmarks = []
    for body, (kstatus, said) in zip(seen, verdicts, strict=True):
        health, message = argocd_health(body)
        status = body.get("status") or {}
        moment = f"{status.get('phase')}, generation {body['metadata']['generation']}: {health} ({message});"
        moment += f" kstatus {kstatus} ({said})"
        assert kstatus in KSTATUS_OF[health], moment
        expected = _expected_health(body)
        if expected is not None:
            assert health == expected, moment
            landmarks.append(health)
    assert {"Progressing", "Healthy", "Degraded"} <= set(landmarks), landmarks


def _last_stretch(moments: list[Moment], weights: tuple[int, int, int], phase: str) -> tuple[Moment, Moment]:
    """The moment `weights` last began before `phase` first came, and that moment: a stage takes the challenger's
    share and mirror away while it is not ready (as while a pinned digest rolls its pod on a busy node) and gives
    them back when it is."""
    end = next(index for index, moment in enumerate(moments) if moment.phase == phase)
    start = end
    while start > 0 and moments[start - 1].weights == weights:
        start -= 1
    assert start < end, [moment.weights for moment in moments[:end]]
    return moments[start], moments[end]


def _served_by_traefik(story: demo.Story, start: float, end: float) -> dict[str, float]:
    """Requests Traefik sent to each version's predictor Service between `start` and `end` (unix seconds)."""
    # Traefik names a Service <namespace>-<name>-<port>, with a run of dashes made one.
    service = f"{NAMESPACE}-{demo.NAME}-+(v[0-9]+)-predictor-.*"
    query = f'sum by (service) (increase(traefik_service_requests_total{{service=~"{service}"}}[{end - start:.0f}s]))'
    served: dict[str, float] = {}
    for series in queries.instant(story.prometheus, query, at=end):
        match = re.fullmatch(service, series["metric"]["service"])
        if match is not None:
            served[match[1]] = served.get(match[1], 0.0) + float(series["value"][1])
    return served


def _from_gateway(before: dict[tuple[str, int], int], after: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """The answers clients got from the gateway rather than a version (none said which), and the requests they gave
    up on, after `before`."""
    grew = {
        answer: count - before.get(answer, 0) for answer, count in after.items() if answer[0] in ("?", "unreachable")
    }
    return {answer: count for answer, count in grew.items() if count}


def _shares(served: dict[str, float]) -> str:
    return ", ".join(f"{version} {count:.0f}" for version, count in sorted(served.items()))
