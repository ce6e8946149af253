"""A real monitor process (steward-monitor) on loopback, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from steward_harness.servers import Server, await_health, free_ports, halt, http_post, launch

STARTUP_TIMEOUT = 30.0


class MonitorError(RuntimeError):
    """The monitor process did not come up; the message carries the tail of its log."""


@dataclass
class Monitor(Server):
    """One `python -m steward_monitor` process over the store at `store` (a SQLAlchemy URL), with `token` for
    outcomes. `kill()` stops it the hard way; `start()` again serves the same store on the same port."""

    store: str
    token: str | None = "outcome-token"  # noqa: S105 -- a loopback test token
    args: list[str] = field(default_factory=list)
    """More flags for steward-monitor."""
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-monitor-")))
    port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "monitor.log"

    def start(self) -> Monitor:
        self.port = self.port or free_ports(1)[0]
        arguments = [f"--store={self.store}", f"--port={self.port}", *self.args]
        if self.token is not None:
            token_file = self.directory / "token"
            token_file.write_text(self.token)
            arguments.append(f"--token-file={token_file}")
        self._process = launch([sys.executable, "-m", "steward_monitor", *arguments], self.log, os.environ.copy())
        await_health(
            self._process,
            f"{self.url}/healthz",
            what="the monitor",
            timeout=STARTUP_TIMEOUT,
            error=MonitorError,
            tail=self.tail,
        )
        return self

    def stop(self, keep: bool = True) -> None:
        halt(self._process)
        self._process = None

    def kill(self) -> None:
        """SIGKILL, as a node failure or an OOM kill would: no shutdown code runs."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
            self._process = None

    def post(self, path: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        return http_post(f"{self.url}{path}", body, headers)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log})"
