"""A local kubelet for batch runs, where no node runs them: for every Pod of a batch Job in the namespaces it serves
(made by Kubernetes' own CronJob and Job controllers, or by `kubectl create job --from=cronjob/...`), it runs the
pod's `steward-predict batch` command as a local process, and once that exits reports the pod Succeeded or Failed
with the container's exit code and termination message (what the command wrote to /dev/termination-log), as a
kubelet does; the Job controller then marks the Job complete or failed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import urllib.error
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steward_harness.servers import halt, launch
from steward_harness.stream_workers import STEWARD_PREDICT
from steward_harness.sweeping import Sweeper

RUNS = "steward.dev/variant,batch.kubernetes.io/job-name"
"""The labels every batch run's pod has: a version's variant, and the Job that made it."""
TERMINATION_LOG = "/dev/termination-log"
MESSAGE_BYTES = 4096
"""What a kubelet keeps of a termination message."""


@dataclass
class BatchRun:
    """One pod's command, running as a local process."""

    process: subprocess.Popen[bytes]
    log: Path
    message: Path
    started: str

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        halt(self.process)


@dataclass
class BatchPlane(Sweeper[BatchRun]):
    """Runs the batch Jobs' pods of `namespaces` as local processes (by namespace/name/uid of their pod), their logs
    and termination messages under `directory`."""

    namespaces: set[str] = field(default_factory=set)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-batch-")))
    interval: float = 0.2
    _reported: set[str] = field(default_factory=set, init=False)

    def logs(self) -> list[Path]:
        return sorted(self.directory.glob("*.log"))

    def _sweep(self) -> None:
        seen = set()
        for key, pod in self._pods(self.namespaces, RUNS):
            seen.add(key)
            if key in self._reported or (pod.get("status") or {}).get("phase") in {"Succeeded", "Failed"}:
                continue
            run = self._running.get(key) or self._run(key, pod)
            if run.returncode is not None:
                self._report(pod, run)
                self._reported.add(key)
                self._running.pop(key)
        for key in set(self._running) - seen:
            self._retire(key)

    def _run(self, key: str, pod: dict[str, Any]) -> BatchRun:
        """Start the pod's command as a kubelet would, its termination message written to a file of its own."""
        (container,) = pod["spec"]["containers"]
        stem = key.replace("/", "_")
        message = self.directory / f"{stem}.termination-log"
        message.touch()
        environment = {variable["name"]: variable.get("value", "") for variable in container.get("env", [])}
        arguments = [str(message) if argument == TERMINATION_LOG else argument for argument in container["args"]]
        log = self.directory / f"{stem}.log"
        process = launch([str(STEWARD_PREDICT), *arguments], log, {**os.environ, **environment})
        run = BatchRun(process, log, message, _now())
        self._running[key] = run
        return run

    def _retire(self, key: str) -> None:
        self._running.pop(key).stop()

    def _report(self, pod: dict[str, Any], run: BatchRun) -> None:
        """What a kubelet reports of a container that exited: its exit code and termination message."""
        metadata, code = pod["metadata"], run.returncode
        now = _now()
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": run.message.read_bytes()[:MESSAGE_BYTES].decode(errors="replace"),
            "startedAt": run.started,
            "finishedAt": now,
        }
        (container,) = pod["spec"]["containers"]
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "startTime": run.started,
            "conditions": [
                {"type": kind, "status": "True" if kind == "PodScheduled" else "False", "lastTransitionTime": now}
                for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {"terminated": terminated},
                }
            ],
        }
        path = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}/status"
        with contextlib.suppress(urllib.error.HTTPError):  # Deleted meanwhile: nothing left to report on.
            self._request("PATCH", path, {"status": status}, "application/merge-patch+json")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
