"""steward-local demo: a release story played end to end on this machine, with real parts.

A local control plane, the operator, a local data plane (a real predictor process per InferenceService, objects
marked ready the way KServe would), a gateway that honours the operator's route weights and mirror, a real
Prometheus scraping the predictors, and steady traffic from a real dataset. The story:

1. v1 serves.
2. v2, better on held-out data, is validated, shadowed, canaried and promoted, each step on evidence.
3. v3 ships feature code that takes the log of a feature which is sometimes 0 (a 5xx for those requests) and
   predictions shifted towards one class; it passes offline validation, and is rolled back automatically.
4. Git is reverted to v2 inside the rollback window, and the deployment is Ready again.

Then a timeline table and a plot of weights, error rates and predictions over time are written.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from steward_harness import upstream
from steward_harness.controlplane import ControlPlane
from steward_harness.dataplane import DataPlane
from steward_harness.gateways import Gateway
from steward_harness.kubectl import Kubectl
from steward_harness.operators import Operator
from steward_harness.prometheus import Prometheus
from steward_harness.timelines import Moment, Timeline, plot, query_range, write_table

REPOSITORY = Path(__file__).resolve().parents[2]
NAMESPACE = "demo"
NAME = "tumour-triage"
MODEL_DEPLOYMENTS = "/apis/steward.dev/v1alpha1"


class DemoError(RuntimeError):
    """The story did not go as told: a chapter's outcome was not reached in time."""


# --- the models ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Models:
    """The three bundles, and the rows traffic is drawn from."""

    bundles: dict[str, Path]
    rows: list[dict[str, Any]]


def train(directory: Path) -> Models:
    """v1, v2 and v3 of a classifier on scikit-learn's breast cancer data (benign = 1), sealed as bundles."""
    import numpy as np  # noqa: PLC0415 -- the training stack loads only when the demo runs
    from sklearn.compose import ColumnTransformer  # noqa: PLC0415
    from sklearn.datasets import load_breast_cancer  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.pipeline import Pipeline  # noqa: PLC0415
    from sklearn.preprocessing import FunctionTransformer, StandardScaler  # noqa: PLC0415

    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x = x.iloc[:, :10]
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(len(x) * 0.7)
    x_train, x_test, y_train, y_test = (
        x.iloc[order[:cut]],
        x.iloc[order[cut:]],
        y.iloc[order[:cut]],
        y.iloc[order[cut:]],
    )

    def plain(c: float) -> Any:
        return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(C=c, max_iter=2000))])

    # v3's new feature code: log-transform two skewed features. Some tumours have a concavity of exactly 0,
    # so training dropped those rows to make the log work, and serving them fails. Its heavy class weight
    # shifts predictions towards malignant.
    skewed = ["mean concavity", "mean concave points"]
    logged = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [("log", FunctionTransformer(np.log), skewed)],
                    remainder="passthrough",
                    verbose_feature_names_out=False,
                ),
            ),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(C=1.0, class_weight={0: 60, 1: 1}, max_iter=2000)),
        ]
    )
    bundles = {}
    for version, pipeline, clean in (("v1", plain(0.01), False), ("v2", plain(1.0), False), ("v3", logged, True)):
        fit_x, fit_y, held_x, held_y = x_train, y_train, x_test, y_test
        if clean:
            fit_x, fit_y = x_train[x_train[skewed[0]] > 0], y_train[x_train[skewed[0]] > 0]
            held_x, held_y = x_test[x_test[skewed[0]] > 0], y_test[x_test[skewed[0]] > 0]
        pipeline.fit(fit_x, fit_y)
        bundles[version] = _seal(pipeline, fit_x.assign(benign=fit_y), held_x.assign(benign=held_y), version, directory)
    rows = [{str(key): float(value) for key, value in row.items()} for row in x.to_dict("records")]
    return Models(bundles, rows)


def _seal(pipeline: Any, train: Any, holdout: Any, version: str, directory: Path) -> Path:
    """A fitted pipeline sealed into a bundle by `steward-bundle build`, as a training repository's CI would."""
    import skops.io  # noqa: PLC0415

    scratch = directory / f"{version}-training"
    scratch.mkdir(parents=True)
    skops.io.dump(pipeline, scratch / "pipeline.skops")
    train.to_parquet(scratch / "train.parquet")
    holdout.to_parquet(scratch / "holdout.parquet")
    bundle = directory / version
    command = [
        str(Path(sys.executable).parent / "steward-bundle"),
        "build",
        str(bundle),
        f"--pipeline={scratch / 'pipeline.skops'}",
        f"--train={scratch / 'train.parquet'}",
        f"--holdout={scratch / 'holdout.parquet'}",
        "--target=benign",
        f"--version={version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise DemoError(f"steward-bundle build {version} failed:\n{result.stdout}{result.stderr}")
    return bundle


GATEWAY_API = {"provider": "gateway-api"}


def manifest(version: str, bundle: str, traffic: dict[str, Any] = GATEWAY_API) -> dict[str, Any]:
    """The ModelDeployment a team would commit, with a rollout sized for minutes instead of hours."""
    return {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "owner": {
                "team": "pathology-ml",
                "contact": "pathology-ml@example.com",
                "runbook": "https://runbooks.example.com/tumour-triage",
            },
            "model": {"version": version, "bundle": bundle},
            "serving": {"mode": "online", "online": {"minReplicas": 1, "maxReplicas": 1}},
            "rollout": {
                "traffic": traffic,
                "validation": {"tolerance": 0.01},
                "shadow": {"percent": 100, "minRequests": 1500, "minDuration": "30s"},
                "canary": {"steps": [20, 50], "minRequestsPerStep": 300, "minStepDuration": "20s"},
                "guardrails": [
                    {"name": "errorRate", "tolerance": 0.005},
                    {"name": "slowRequests", "tolerance": 0.1},
                    {"name": "predictionShift", "tolerance": 0.1},
                ],
                "confidence": 0.95,
                "maxDuration": "8m",
                "rollbackWindow": "1h",
            },
        },
    }


# --- traffic -------------------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Requests at a steady rate through the gateway, one row each, drawn at random from the dataset."""

    url: str
    rows: list[dict[str, Any]]
    host: str = ""
    """The Host header to send, for a gateway that routes by it; empty: the URL's."""
    rate: float = 50.0
    workers: int = 4
    answered: dict[tuple[str, int], int] = field(default_factory=dict)
    """Answers by the version that gave them and their status code."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Traffic:
        for index in range(self.workers):
            thread = threading.Thread(target=self._send, args=(index,), name=f"traffic-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=35)

    def _send(self, index: int) -> None:
        chooser = random.Random(index)  # noqa: S311 -- sampling rows, not secrets
        interval = self.workers / self.rate
        due = time.monotonic()
        while not self._stop.is_set():
            body = json.dumps({"instances": [chooser.choice(self.rows)]}).encode()
            request = urllib.request.Request(  # noqa: S310 -- the local gateway
                self.url, data=body, method="POST", headers=_headers(self.host)
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                    answer = (response.headers.get("x-steward-model-version", "?"), response.status)
            except urllib.error.HTTPError as error:
                answer = (error.headers.get("x-steward-model-version", "?"), error.code)
            except (urllib.error.URLError, OSError):
                answer = ("unreachable", 0)
            with self._lock:
                self.answered[answer] = self.answered.get(answer, 0) + 1
            due += interval
            self._stop.wait(max(0.0, due - time.monotonic()))


# --- the story -----------------------------------------------------------------------------------------------


@dataclass
class Story:
    """The demo's world, and the timeline it records as it goes."""

    plane: ControlPlane
    prometheus: Prometheus
    kubectl: Kubectl
    namespace: str = NAMESPACE
    traffic: dict[str, Any] = field(default_factory=lambda: GATEWAY_API)
    """spec.rollout.traffic of every manifest applied."""
    begun: float = field(default_factory=time.time)
    timeline: Timeline = field(default_factory=Timeline)
    seen: list[dict[str, Any]] = field(default_factory=list)
    """The ModelDeployment as read each time its timeline moved."""
    last_line: float = 0.0

    def elapsed(self) -> float:
        return time.time() - self.begun

    @functools.cached_property
    def _context(self) -> ssl.SSLContext:
        return self.plane.ssl_context()

    def status(self) -> dict[str, Any]:
        path = f"{MODEL_DEPLOYMENTS}/namespaces/{self.namespace}/modeldeployments/{NAME}"
        request = urllib.request.Request(self.plane.server + path)  # noqa: S310 -- the local API server
        with urllib.request.urlopen(request, context=self._context, timeout=10) as response:  # noqa: S310
            body: dict[str, Any] = json.loads(response.read())
            return body

    def apply(self, version: str, bundle: str, label: str, why: str, **spec: Any) -> None:
        """Commit `version` to Git, as it were: apply the manifest (with `spec`'s extra fields) under a GitOps field
        manager."""
        self.timeline.chapters.append((self.elapsed(), label, why))
        print(f"\n[{self.elapsed():5.0f} s] {why}", flush=True)
        document = manifest(version, bundle, self.traffic)
        document["metadata"]["namespace"] = self.namespace
        document["spec"].update(spec)
        self.kubectl.run("apply", "--server-side", "--field-manager=git", "-f", "-", stdin=yaml.safe_dump(document))

    def until(self, what: str, reached: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """Watch the ModelDeployment, printing progress, until `reached`; DemoError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.status()
            self._record(body)
            if reached(body):
                return body
            if time.monotonic() > deadline:
                status = json.dumps(body.get("status", {}), indent=2)
                raise DemoError(f"{what} did not happen within {timeout:.0f} s; status:\n{status}")
            time.sleep(0.5)

    def _record(self, body: dict[str, Any]) -> None:
        moment = Moment.of(self.elapsed(), body)
        changed = self.timeline.add(moment)
        if changed:
            self.seen.append(body)
        if changed or time.time() - self.last_line >= 5:
            self.last_line = time.time()
            print(_progress(moment), flush=True)


def _progress(moment: Moment) -> str:
    incumbent, challenger, shadow = moment.weights
    split = f"{moment.incumbent or '?'} {incumbent}%"
    if moment.challenger:
        split += f", {moment.challenger} {challenger}% + {shadow}% mirrored"
    line = f"[{moment.at:5.0f} s] {moment.phase:<10} {split}"
    if moment.decision and moment.challenger:
        line += f" | {moment.decision}"
    width = shutil.get_terminal_size((160, 24)).columns
    return line if len(line) <= width else line[: width - 1] + "…"


def phase(*phases: str, **versions: str) -> Callable[[dict[str, Any]], bool]:
    def reached(body: dict[str, Any]) -> bool:
        status = body.get("status") or {}
        if status.get("phase") not in phases:
            return False
        return all((status.get(role) or {}).get("version") == version for role, version in versions.items())

    return reached


def ready_with(version: str) -> Callable[[dict[str, Any]], bool]:
    def reached(body: dict[str, Any]) -> bool:
        status = body.get("status") or {}
        conditions = {item["type"]: item["status"] for item in status.get("conditions", [])}
        return (status.get("incumbent") or {}).get("version") == version and conditions.get("Ready") == "True"

    return reached


def play(output: Path, rate: float, chapter_timeout: float) -> Path:
    """The whole story; returns the PNG's path. Raises DemoError when a chapter's outcome is not reached."""
    output.mkdir(parents=True, exist_ok=True)
    work = output / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    print("training v1, v2 and v3 on the breast cancer dataset and sealing them into bundles", flush=True)
    models = train(work / "bundles")
    with contextlib.ExitStack() as stack:
        story, gateway = _bring_up(stack, work)
        traffic = _tell(story, f"{gateway.url}/{NAMESPACE}/{NAME}", models, rate, chapter_timeout)
        return _report(story, traffic, output)


def _bring_up(stack: contextlib.ExitStack, work: Path) -> tuple[Story, Gateway]:
    """Every part the story needs, running until `stack` closes."""
    plane = stack.enter_context(ControlPlane(directory=work / "control-plane"))
    print(f"control plane up at {plane.server}", flush=True)
    kubectl = Kubectl(plane.kubeconfig)
    kubectl.install_crds(REPOSITORY / "crds")
    kubectl.install_crds(upstream.crds())  # InferenceService and HTTPRoute, as KServe and Gateway API ship them
    kubectl.run("create", "namespace", NAMESPACE)
    prometheus = stack.enter_context(Prometheus(directory=work / "prometheus"))
    data_plane = DataPlane(plane.server, plane.ssl_context(), prefix=NAMESPACE, prometheus=prometheus)
    data_plane.predictor_namespaces.add(NAMESPACE)
    stack.enter_context(_running(data_plane))
    stack.enter_context(
        Operator(
            plane.kubeconfig,
            [NAMESPACE],
            prometheus=prometheus.url,
            env={"STEWARD_RESYNC_SECONDS": "2"},
            log=work / "operator.log",
        )
    )
    gateway = stack.enter_context(Gateway(data_plane, seed=1))
    print(f"operator, data plane, gateway and Prometheus ({prometheus.url}) up; logs in {work}", flush=True)
    return Story(plane, prometheus, kubectl), gateway


def _tell(story: Story, route: str, models: Models, rate: float, timeout: float) -> Traffic:
    """The four chapters, with traffic through `route` from the moment v1 serves; returns the stopped traffic."""
    bundles = {version: str(path) for version, path in models.bundles.items()}
    story.apply("v1", bundles["v1"], "apply v1", "v1 is applied: the first version serves")
    story.until("v1 serving", ready_with("v1"), timeout)
    url = f"{route}/v1/models/{NAME}:predict"
    wait_for_route(url)
    traffic = Traffic(url, models.rows, rate=rate).start()
    print(f"traffic: {rate:g} requests/s through the gateway", flush=True)
    try:
        story.apply("v2", bundles["v2"], "apply v2", "v2 is applied: better held-out results")
        story.until("v2 promoted", phase("Promoted", incumbent="v2"), timeout)
        story.apply("v3", bundles["v3"], "apply v3", "v3 is applied: new feature code with a bug")
        story.until("v3 rolled back", phase("RolledBack", incumbent="v2", rolledBack="v3"), timeout)
        story.apply("v2", bundles["v2"], "revert to v2", "Git is reverted to v2")
        story.until("v2 Ready again", ready_with("v2"), timeout)
        time.sleep(3)  # A few more scrapes for the plot.
    finally:
        traffic.stop()
    return traffic


# Per version, over 10 s: the share of requests answered 5xx (0 for a version without any), and of predictions
# that are benign (class 1). Mirrored requests count: they are what the shadow stage is judged on.
ERROR_RATE = (
    '(sum by (version) (rate(steward_predictor_requests_total{code=~"5.."}[10s]))'
    " or 0 * sum by (version) (rate(steward_predictor_requests_total[10s])))"
    " / sum by (version) (rate(steward_predictor_requests_total[10s]))"
)
BENIGN_SHARE = (
    'sum by (version) (rate(steward_predictor_predictions_total{bin="1"}[10s]))'
    " / sum by (version) (rate(steward_predictor_predictions_total[10s]))"
)


def _report(story: Story, traffic: Traffic, output: Path) -> Path:
    """The timeline table, the plot and the Events, written to `output` and summed up on the terminal."""
    ended, url = time.time(), story.prometheus.url
    table, picture, events = output / "timeline.md", output / "timeline.png", output / "events.txt"
    write_table(story.timeline, table)
    plot(
        story.timeline,
        picture,
        started=story.begun,
        errors=query_range(url, ERROR_RATE, story.begun, ended, 1),
        positives=query_range(url, BENIGN_SHARE, story.begun, ended, 1),
        title=f"{NAME}: v1 → v2 (promoted) → v3 (rolled back) → v2",
    )
    events.write_text(story.kubectl.run("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp").stdout)
    print("\n" + story.timeline.markdown())
    plugin = Path(sys.executable).parent / "kubectl-steward"
    kubeconfig = f"--kubeconfig={story.plane.kubeconfig}"
    for command in ("status", "history"):
        print(f"$ kubectl steward {command} {NAME} -n {NAMESPACE}", flush=True)
        subprocess.run([plugin, command, NAME, "-n", NAMESPACE, kubeconfig], check=False, timeout=60)
    answered = ", ".join(f"{version} {code}: {count}" for (version, code), count in sorted(traffic.answered.items()))
    print(f"answers seen by clients (version, status): {answered}")
    print(f"wrote {table}, {picture} and {events} in {ended - story.begun:.0f} s")
    return picture


@contextlib.contextmanager
def _running(data_plane: DataPlane) -> Iterator[DataPlane]:
    data_plane.start()
    try:
        yield data_plane
    finally:
        data_plane.stop()


def _headers(host: str) -> dict[str, str]:
    return {"content-type": "application/json", **({"host": host} if host else {})}


def wait_for_route(url: str, host: str = "", timeout: float = 30.0) -> None:
    """Until the gateway routes `url` (for `host`) to a predictor: a gateway serves a new route a moment after it
    accepts it (404 until then), and knows its backends' endpoints a moment after that (502, 503 until then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, data=b"{}", method="POST", headers=_headers(host))  # noqa: S310
        try:
            urllib.request.urlopen(request, timeout=5).close()  # noqa: S310
        except urllib.error.HTTPError as error:
            if error.code not in (404, 502, 503, 504):
                return  # A predictor answered (the empty body is a 400).
        except OSError:
            pass
        time.sleep(0.2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's command-line options, for `steward-local demo`."""
    parser.add_argument(
        "--output",
        type=Path,
        default=REPOSITORY / "build" / "demo",
        help="where timeline.md, timeline.png, events.txt and (on failure) the logs go (default: build/demo)",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (default %(default)s)")
    parser.add_argument(
        "--chapter-timeout", type=float, default=240.0, help="seconds each chapter may take (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        play(args.output, args.rate, args.chapter_timeout)
    except DemoError as error:
        print(f"steward-local demo: {error}\nlogs: {args.output / 'work'}", file=sys.stderr)
        return 1
    return 0
