"""A local kubelet for stream workers, where no node runs them: for every Pod of a stream workers' StatefulSet in the
namespaces it serves, it runs the pod's `steward-predict stream` command as a local process, reports the pod Running
and Ready once the worker takes records, and when the pod is deleted stops the process (SIGTERM, as a kubelet does)
and confirms the deletion. The StatefulSet controller that makes, rolls and deletes the pods is Kubernetes' own."""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from steward_harness.prometheus import Prometheus
from steward_harness.stream_workers import StreamWorker
from steward_harness.sweeping import Sweeper

WORKERS = "app.kubernetes.io/name=steward-stream"
"""The label on every stream worker's pod."""


@dataclass
class StreamPlane(Sweeper[StreamWorker]):
    """Runs the stream workers' pods of `namespaces` as local processes (by namespace/name/uid of their pod),
    scraped by `prometheus` when given."""

    namespaces: set[str] = field(default_factory=set)
    prometheus: Prometheus | None = None
    interval: float = 0.2

    def workers(self, namespace: str) -> list[StreamWorker]:
        return [worker for key, worker in self._running.items() if key.startswith(f"{namespace}/")]

    def _sweep(self) -> None:
        seen = set()
        for key, pod in self._pods(self.namespaces, WORKERS):
            seen.add(key)
            worker = self._running.get(key) or self._run(key, pod)
            if worker.returncode is not None:
                continue  # It stopped on its own: the pod stays not ready, as a crashed container leaves it.
            if not _ready(pod) and worker.ready():
                self._mark_ready(pod)
        for key in set(self._running) - seen:
            self._retire(key)

    def _run(self, key: str, pod: dict[str, Any]) -> StreamWorker:
        """Start the pod's worker as a kubelet would: its command's flags, with $(VAR) from its environment."""
        (container,) = pod["spec"]["containers"]
        environment = {}
        for variable in container.get("env", []):
            found = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            environment[variable["name"]] = (
                pod["metadata"]["name"] if found == "metadata.name" else variable.get("value", "")
            )
        flags = []
        for argument in container["args"][1:]:  # After "stream".
            if argument.startswith(("--port=", "--host=")):
                continue  # Each worker here listens on a free loopback port of its own.
            expanded = argument
            for name, value in environment.items():
                expanded = expanded.replace(f"$({name})", value)
            flags.append(expanded)
        worker = StreamWorker(flags, env=environment).launch()
        self._running[key] = worker
        if self.prometheus is not None:
            namespace, name = key.split("/")[:2]
            self.prometheus.add_target(worker.url.removeprefix("http://"), namespace=namespace, pod=name)
        return worker

    def _retire(self, key: str) -> None:
        worker = self._running.pop(key)
        if self.prometheus is not None:
            self.prometheus.remove_target(worker.url.removeprefix("http://"))
        worker.stop()

    def _mark_ready(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        status = {"phase": "Running", "startTime": now, "conditions": conditions}
        path = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}/status"
        with contextlib.suppress(urllib.error.HTTPError):  # Deleted meanwhile: the next sweep sees it gone.
            self._request("PATCH", path, {"status": status}, "application/merge-patch+json")


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
