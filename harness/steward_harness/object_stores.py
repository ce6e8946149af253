"""An S3-compatible object store for tests (moto in server mode): on loopback for the host's own processes, or on
the node's address for the node's pods; `environment` is what a client (boto, s3fs, a pod's Secret) needs to reach
it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from steward_harness.servers import Server, free_ports, halt, launch

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "steward",
    "AWS_SECRET_ACCESS_KEY": "steward-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MOTO_SERVER = Path(sys.executable).with_name("moto_server")


class ObjectStoreError(RuntimeError):
    """The object store did not start."""


@dataclass
class ObjectStore(Server):
    host: str = "127.0.0.1"
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-s3-")))
    port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def environment(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self, timeout: float = 30.0) -> float:
        """Start the server and wait until it answers; returns the seconds it took."""
        started = time.monotonic()
        self.port = self.port or free_ports(1, self.host)[0]
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "moto.log"
        self._process = launch([str(MOTO_SERVER), "-H", self.host, "-p", str(self.port)], log, dict(os.environ))
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()  # noqa: S310 -- the store's URL
                return time.monotonic() - started
            if time.monotonic() - started > timeout or self._process.poll() is not None:
                raise ObjectStoreError(f"the object store did not start:\n{log.read_text()}")
            time.sleep(0.1)

    def stop(self, keep: bool = False) -> None:
        process, self._process = self._process, None
        halt(process)
        if not keep:
            shutil.rmtree(self.directory, ignore_errors=True)
