"""Real predictor processes (python -m steward_predictor) on loopback, for tests, benchmarks and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from steward_harness.servers import STARTUP_TIMEOUT, Server, await_health, free_ports, halt, http_get, http_post, launch


class PredictorError(RuntimeError):
    """The predictor process did not come up; the message carries the tail of its log."""


@dataclass
class Predictor(Server):
    """One `python -m steward_predictor` process serving a bundle."""

    bundle: str
    name: str = "model"
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    log: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="steward-predictor-", suffix=".log")[1]))
    port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Predictor:
        """Start the process and wait until it answers; the model itself may be ready or not."""
        self.port = self.port or free_ports(1)[0]
        command = [
            sys.executable,
            "-m",
            "steward_predictor",
            f"--model_name={self.name}",
            f"--model_dir={self.bundle}",
            f"--http_port={self.port}",
            "--enable_grpc=false",
            *self.args,
        ]
        self._process = launch(command, self.log, {**os.environ, **self.env})
        await_health(
            self._process,
            f"{self.url}/v2/health/live",
            what="the predictor",
            timeout=STARTUP_TIMEOUT,
            error=PredictorError,
            tail=self.tail,
        )
        return self

    def stop(self, keep: bool = True) -> None:
        """Stop the process; its log is removed unless `keep` (by default it stays, for the test report)."""
        halt(self._process)
        if not keep:
            self.log.unlink(missing_ok=True)

    def ready(self) -> tuple[bool, str]:
        """Whether the model is ready, and the body of the readiness endpoint (the reason when it is not)."""
        status, body = self.get(f"/v2/models/{self.name}/ready")
        return status == 200, body

    def get(self, path: str) -> tuple[int, str]:
        return http_get(f"{self.url}{path}")

    def post(self, path: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        return http_post(f"{self.url}{path}", body, headers)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log})"
