"""A batch ModelDeployment released version by version, as Git would write each manifest, with its runs started
now rather than at their schedule (`kubectl create job --from`, as a person would), and waited on until a version
reaches a phase: for the batch release tests on the control plane and the batch story on the node."""

from __future__ import annotations

import json
import time
from typing import Any

from steward_harness.kubectl import Kubectl

NAME = "tumours"


class BatchRelease:
    """One batch ModelDeployment in `namespace`: each version's bundle at `bundles[version]`, reading and writing
    where `batch` (spec.serving.batch, less the schedule) says."""

    def __init__(self, kubectl: Kubectl, namespace: str, bundles: dict[str, str], batch: dict[str, Any]) -> None:
        self.kubectl, self.namespace, self.bundles, self.batch = kubectl, namespace, bundles, batch
        self.runs = 0

    def manifest(
        self, version: str, *, validation: bool = True, digest: str | None = None, bundle: str | None = None
    ) -> dict[str, Any]:
        model: dict[str, Any] = {"version": version, "bundle": self.bundles[bundle or version]}
        if digest:
            model["digest"] = digest
        return {
            "apiVersion": "steward.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": self.namespace},
            "spec": {
                "owner": {"team": "oncology", "contact": "#tumours", "runbook": "https://runbooks.example.com/t"},
                "model": model,
                # Once a year: every run here is started by hand.
                "serving": {"mode": "batch", "batch": {"schedule": "0 0 1 1 *", **self.batch}},
                "rollout": {
                    "validation": {"enabled": validation, "metric": "accuracy", "tolerance": 0.05},
                    "shadow": {"minRequests": 1_000, "minDuration": "0s"},
                    "guardrails": [
                        {"name": "errorRate", "tolerance": 0.01},
                        {"name": "predictionShift", "tolerance": 0.1},
                        {"name": "disagreement", "tolerance": 0.1},
                    ],
                    "maxDuration": "1h",
                },
                # The team labels its output: where there is a monitor, the incumbent's runs report every row.
                "monitoring": {"outcome": {"metric": "accuracy", "labelDelay": "24h"}},
            },
        }

    def apply(self, version: str, **options: Any) -> None:
        self.kubectl.run("apply", "--server-side", "-f", "-", stdin=json.dumps(self.manifest(version, **options)))

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = self.kubectl.json("get", "md", NAME, "-n", self.namespace).get("status", {})
        return found

    def run_now(self, version: str) -> str | None:
        """Start a run of `version`'s CronJob now, as a person would; the Job's name, or None once the release has
        removed the CronJob."""
        self.runs += 1
        job, schedule = f"{NAME}-run-{self.runs}", f"cronjob/{NAME}--{version}"
        started = self.kubectl.run("create", "job", job, f"--from={schedule}", "-n", self.namespace, check=False)
        assert started.returncode == 0 or "NotFound" in started.stderr, started.stderr
        return job if started.returncode == 0 else None

    def until(self, phase: str, version: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until `version` reaches `phase` (Stable or Promoted: it serves; RolledBack: it was rolled back),
        starting a run of it whenever it is the challenger and none is under way."""
        deadline = time.monotonic() + timeout
        where = "rolledBack" if phase == "RolledBack" else "incumbent"
        while True:
            status = self.status()
            if status.get("phase") == phase and (status.get(where) or {}).get("version") == version:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{version} not {phase} within {timeout:.0f} s: {status}")
            if (status.get("challenger") or {}).get("version") == version and not self._running():
                self.run_now(version)
            time.sleep(1)

    def _running(self) -> bool:
        jobs = self.kubectl.json("get", "jobs", "-n", self.namespace).get("items", [])
        return not all(_finished(job) for job in jobs)


def _finished(job: dict[str, Any]) -> bool:
    conditions = job.get("status", {}).get("conditions", [])
    return any(c["type"] in {"Complete", "Failed"} and c["status"] == "True" for c in conditions)
