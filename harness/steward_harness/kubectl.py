"""Runs the real kubectl against a kubeconfig, the way a user or a GitOps tool would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The kubectl to run; any client within one minor version of the API server works.
KUBECTL = os.environ.get("STEWARD_KUBECTL", "kubectl")


class KubectlError(RuntimeError):
    """kubectl exited non-zero; `stderr` holds what it said."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Kubectl:
    """kubectl bound to one kubeconfig."""

    kubeconfig: Path

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        binary = shutil.which(KUBECTL)
        if binary is None:
            raise FileNotFoundError(f"{KUBECTL} is not on PATH (set STEWARD_KUBECTL to use another kubectl)")
        result = subprocess.run(
            [binary, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(list(args), result.returncode, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        """Run a read command with -o json and parse its output."""
        return json.loads(self.run(*args, "-o", "json").stdout)

    def install_crds(self, directory: Path, timeout: float = 60.0) -> None:
        """Apply the CRDs in `directory` and wait until they are served and documented (kubectl explain)."""
        self.run("apply", "--server-side", "-f", str(directory))
        deadline = time.monotonic() + timeout
        # Polled rather than `kubectl wait`, which gives up on a CRD whose conditions are still null.
        while not all(map(_established, _items(self.json("get", "-f", str(directory))))):
            if time.monotonic() > deadline:
                raise KubectlError(["wait", "-f", str(directory)], 1, "the CRDs were never Established")
            time.sleep(0.2)
        # "customresourcedefinition.apiextensions.k8s.io/<plural>.<group>", one line per CRD.
        names = self.run("get", "-f", str(directory), "-o", "name").stdout.split()
        # The OpenAPI document that explain and client-side tooling read is published a moment after Established.
        for kind in (name.rpartition("/")[2] for name in names):
            while self.run("explain", kind, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise KubectlError(["explain", kind], 1, "the CRD's OpenAPI schema was never published")
                time.sleep(0.2)


def _items(found: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects of a `kubectl get -o json`: a List's items, or the one object."""
    items: list[dict[str, Any]] = found["items"] if found.get("kind") == "List" else [found]
    return items


def _established(crd: dict[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
