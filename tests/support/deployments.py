"""ModelDeployments driven the way their users drive them: the example manifests, a new model version as a Git commit
would write it, and one ModelDeployment applied under a GitOps field manager and commanded with kubectl steward, with
what the operator made of it."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from steward_harness.controlplane import ControlPlane
from steward_harness.kubectl import Kubectl
from steward_operator import reconciling
from tests.conftest import REPOSITORY
from tests.support.waiting import PATIENCE, wait_until

CHILD_KINDS = ",".join(f"{kind.plural}.{kind.resource[0]}" for kind in reconciling.CHILD_KINDS)
"""Every kind of child a ModelDeployment can own, as kubectl names them."""
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
        """Wait until status is in `phase` with the given weights (incumbent=, challenger=, shadow=); a phase may
        wait on predictors starting."""

        def arrived() -> dict[str, Any] | None:
            status = self.status()
            weights = status.get("weights", {})
            if status.get("phase") == phase and all(weights.get(k) == v for k, v in expected.items()):
                return status
            return None

        return wait_until(arrived, timeout=2 * PATIENCE)

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


def steward_status(kubectl: Kubectl, name: str, namespace: str) -> str:
    """What `kubectl steward status` prints for a ModelDeployment, run as a user runs it."""
    return subprocess.run(
        [str(KUBECTL_STEWARD), "status", name, "-n", namespace, f"--kubeconfig={kubectl.kubeconfig}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
