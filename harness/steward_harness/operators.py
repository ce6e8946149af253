"""The Steward operator as a real process (python -m steward_operator) against a control plane."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from steward_harness.servers import STARTUP_TIMEOUT, Server, await_health, free_ports, halt, http_get, launch


class OperatorError(RuntimeError):
    """The operator did not come up; the message carries the tail of its log."""


@dataclass
class Operator(Server):
    """One operator process. `kill()` stops it the hard way, as a node failure would; `start()` again
    resumes it on the same log."""

    kubeconfig: Path
    namespaces: list[str] = field(default_factory=list)
    """Namespaces (or globs) to serve; all when empty."""
    prometheus: str = ""
    """The Prometheus the operator reads release evidence from; empty: releases move only on commands."""
    env: dict[str, str] = field(default_factory=dict)
    log: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="steward-operator-", suffix=".log")[1]))
    metrics_port: int = 0
    health_port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> Operator:
        if not self.metrics_port:
            self.metrics_port, self.health_port = free_ports(2)
        environment = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "STEWARD_METRICS_PORT": str(self.metrics_port),
            "STEWARD_HEALTH_PORT": str(self.health_port),
            "STEWARD_PROMETHEUS_URL": self.prometheus,
            **self.env,
        }
        command = [
            sys.executable,
            "-m",
            "steward_operator",
            "--verbose",
            *(f"--namespace={namespace}" for namespace in self.namespaces),
        ]
        self._process = launch(command, self.log, environment)
        health = f"http://127.0.0.1:{self.health_port}/healthz"
        await_health(
            self._process, health, what="the operator", timeout=STARTUP_TIMEOUT, error=OperatorError, tail=self.tail
        )
        return self

    def stop(self, keep: bool = True) -> None:
        halt(self._process)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last writes."""
        halt(self._process, signal.SIGKILL)
        self._process = None

    def metrics(self) -> str:
        status, text = http_get(self.metrics_url)
        if status != 200:
            raise OperatorError(f"{self.metrics_url} answered {status}")
        return text

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
