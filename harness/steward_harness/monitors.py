"""A real monitor process (steward-monitor) on loopback, for tests and benchmarks."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from steward_harness.servers import STARTUP_TIMEOUT, Server, await_health, free_ports, halt, http_post, launch


class MonitorError(RuntimeError):
    """The monitor process did not come up; the message carries the tail of its log."""


@dataclass
class Monitor(Server):
    """One `python -m steward_monitor` process over the store at `store` (a SQLAlchemy URL), with `token` for
    outcomes and `ingest_key` for predictions (`predictor_token` derives a model's token from it). `kill()` stops
    it the hard way; `start()` again serves the same store on the same port."""

    store: str
    token: str | None = "outcome-token"  # noqa: S105 -- a loopback test token
    ingest_key: str | None = "ingest-key"
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

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self) -> Monitor:
        self.port = self.port or free_ports(1)[0]
        arguments = [f"--store={self.store}", f"--port={self.port}", *self.args]
        for flag, secret in (("--token-file", self.token), ("--ingest-key-file", self.ingest_key)):
            if secret is not None:
                path = self.directory / flag.removeprefix("--")
                path.write_text(secret)
                arguments.append(f"{flag}={path}")
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

    def reporting(self) -> dict[str, str]:
        """The operator's environment that has predictors report here, with tokens it derives from this monitor's
        ingest key, as the chart sets it; once started."""
        return {
            "STEWARD_MONITOR_URL": self.url,
            "STEWARD_MONITOR_INGEST_KEY_FILE": str(self.directory / "ingest-key-file"),
        }

    def post(self, path: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        return http_post(f"{self.url}{path}", body, headers)

    def predictor_token(self, namespace: str, model: str) -> str:
        """The token predictors of `model` in `namespace` present, as the operator derives it from the ingest key
        (the parts of Steward never import each other: steward_monitor.tokens holds the monitor's own copy)."""
        if self.ingest_key is None:
            raise MonitorError("this monitor has no ingest key: no predictor token can be derived")
        scope = f"{namespace}/{model}"
        key = self.ingest_key.strip().encode()
        return f"{scope}/{hmac.new(key, scope.encode(), hashlib.sha256).hexdigest()}"

    def authorization(self, namespace: str, model: str) -> dict[str, str]:
        """The header predictors of `model` in `namespace` send with their events."""
        return {"Authorization": f"Bearer {self.predictor_token(namespace, model)}"}

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log})"
