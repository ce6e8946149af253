"""A real stream worker (`steward-predict stream`) on loopback, for tests and benchmarks: started with the flags a
StatefulSet's pod would get, ready once it takes records, and stopped politely (SIGTERM) or killed mid-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from steward_harness.servers import STARTUP_TIMEOUT, Server, await_health, free_ports, halt, http_get, launch

STEWARD_PREDICT = Path(sys.executable).with_name("steward-predict")


class StreamWorkerError(RuntimeError):
    """The worker did not come up; the message carries the tail of its log."""


@dataclass
class StreamWorker(Server):
    """One worker of a ModelDeployment's stream: `flags` are steward-predict stream's beyond --port."""

    flags: list[str]
    env: dict[str, str] = field(default_factory=dict)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-stream-")))
    port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "worker.log"

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def launch(self) -> StreamWorker:
        """Start the worker, and return at once: `ready()` tells when it takes records."""
        self._launch()
        return self

    def _launch(self) -> subprocess.Popen[bytes]:
        self.port = self.port or free_ports(1)[0]
        command = [str(STEWARD_PREDICT), "stream", *self.flags, f"--port={self.port}", "--host=127.0.0.1"]
        self._process = launch(command, self.log, {**os.environ, **self.env})
        return self._process

    def ready(self) -> bool:
        return self._process is not None and http_get(f"{self.url}/ready", timeout=1)[0] == 200

    def start(self) -> StreamWorker:
        await_health(
            self._launch(),
            f"{self.url}/ready",
            what="the stream worker",
            timeout=STARTUP_TIMEOUT,
            error=StreamWorkerError,
            tail=self.tail,
        )
        return self

    def stop(self, keep: bool = True) -> None:
        """SIGTERM: the batch under way is finished, and the worker leaves its group."""
        process, self._process = self._process, None
        halt(process)

    def send(self, signum: signal.Signals) -> None:
        """Send the worker a signal, and return at once."""
        if self._process is not None:
            self._process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, whatever it is doing: a transaction may be left open, for the broker to abort."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def metrics(self) -> str:
        return http_get(f"{self.url}/metrics")[1]

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log})"
