"""Operator benchmark: reconcile latency (a ModelDeployment created -> its InferenceService exists) and the
operator's memory with many ModelDeployments, on the local control plane with the real operator process."""

from __future__ import annotations

import argparse
import copy
import json
import ssl
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPOSITORY = Path(__file__).resolve().parents[1]

from steward_harness.controlplane import ControlPlane  # noqa: E402
from steward_harness.dataplane import DataPlane  # noqa: E402
from steward_harness.kubectl import Kubectl  # noqa: E402
from steward_harness.operators import Operator  # noqa: E402

NAMESPACE = "bench"
MODELS = "/apis/steward.dev/v1alpha1/namespaces/bench/modeldeployments"
SERVICES = "/apis/serving.kserve.io/v1beta1/namespaces/bench/inferenceservices"


class Api:
    """Just enough of the API for timing without a kubectl process in the way."""

    def __init__(self, server: str, context: ssl.SSLContext) -> None:
        self.server, self.context = server, context

    def request(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 -- the control plane's https URL
            self.server + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, context=self.context, timeout=30) as response:  # noqa: S310
            result: dict[str, Any] = json.loads(response.read() or b"{}")
            return result

    def exists(self, path: str) -> bool:
        try:
            self.request("GET", path)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return False
            raise
        return True


def manifest(index: int) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(yaml.safe_load((REPOSITORY / "examples" / "online.yaml").read_text()))
    body["metadata"] = {"name": f"model-{index:03d}", "namespace": NAMESPACE}
    return body


def rss(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def timed_creations(api: Api, count: int) -> list[float]:
    """Seconds from each ModelDeployment's creation to its InferenceService's, one at a time."""
    latencies = []
    for index in range(count):
        body = manifest(index)
        started = time.perf_counter()
        api.request("POST", MODELS, body)
        child = f"{SERVICES}/{body['metadata']['name']}-2024-06-01"
        while not api.exists(child):
            time.sleep(0.005)
        latencies.append(time.perf_counter() - started)
    return latencies


def fill(api: Api, start: int, total: int) -> int:
    """Create the rest at once, and wait until all are Stable; returns how many are."""
    for index in range(start, total):
        api.request("POST", MODELS, manifest(index))
    stable = 0
    deadline = time.monotonic() + 600
    while stable < total and time.monotonic() < deadline:
        time.sleep(1)
        items = api.request("GET", MODELS)["items"]
        stable = sum(1 for item in items if item.get("status", {}).get("phase") == "Stable")
    return stable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deployments", type=int, default=300, help="ModelDeployments to create (default: 300)")
    parser.add_argument("--timed", type=int, default=60, help="of which created one at a time and timed")
    parser.add_argument("--resync", type=float, default=30.0, help="operator resync interval in seconds")
    args = parser.parse_args()

    with ControlPlane() as plane:
        kubectl = Kubectl(plane.kubeconfig)
        kubectl.install_crds(REPOSITORY / "crds")
        kubectl.install_crds(REPOSITORY / "tests" / "crds")
        kubectl.run("create", "namespace", NAMESPACE)
        api = Api(plane.server, plane.ssl_context())
        data_plane = DataPlane(plane.server, plane.ssl_context(), prefix=NAMESPACE, interval=0.5).start()
        operator = Operator(plane.kubeconfig, env={"STEWARD_RESYNC_SECONDS": str(args.resync)})
        operator.start()
        try:
            pid = operator.pid or 0
            idle = rss(pid)[0]
            latencies = timed_creations(api, args.timed)
            print(f"created {args.timed} ModelDeployments one at a time", file=sys.stderr)
            started = time.perf_counter()
            stable = fill(api, args.timed, args.deployments)
            settled = time.perf_counter() - started
            time.sleep(args.resync + 5)  # One full resync round over all of them.
            resident, peak = rss(pid)
        finally:
            operator.stop()
            data_plane.stop()

    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    print(f"\nreconcile latency, ModelDeployment created -> InferenceService exists ({len(latencies)} timed):")
    print(f"  p50 {p50 * 1000:.0f} ms   p99 {p99 * 1000:.0f} ms   (goal: p50 < 1000 ms)")
    print(f"  {args.deployments - args.timed} more created at once: all {stable} Stable after {settled:.1f} s")
    print(f"operator memory with {args.deployments} ModelDeployments, after a resync round:")
    print(f"  RSS {resident:.0f} MiB, peak {peak:.0f} MiB, idle at start {idle:.0f} MiB   (goal: RSS < 250 MB)")
    return 0 if p50 < 1.0 and peak * 1.048576 < 250 and stable == args.deployments else 1


if __name__ == "__main__":
    raise SystemExit(main())
