"""What every server the harness runs has in common: start, stop, and a context manager that keeps the
server's logs when the block it guards fails."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

STOP_TIMEOUT = 15.0
STARTUP_TIMEOUT = 180.0
"""Seconds a server may take to come up: a few on an idle machine, many times that on a loaded one. Waiting longer
costs nothing when a server comes up sooner, and a server that exits is reported at once."""


class Server(ABC):
    @abstractmethod
    def start(self) -> object:
        """Start and wait until ready."""

    @abstractmethod
    def stop(self, keep: bool = False) -> None:
        """Stop; keep the state and logs on disk when `keep`."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop(keep=True)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop(keep=error is not None)


def halt(process: subprocess.Popen[bytes] | None, how: signal.Signals = signal.SIGTERM) -> None:
    """Ask a process to stop, and kill it if it has not within STOP_TIMEOUT."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(how)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free right now on `host` (loopback by default)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of a GET on one of the harness's own loopback servers; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 -- loopback http only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def http_post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """Status, headers and body of a POST to one of the harness's own loopback servers; `body` is sent as is when
    it is bytes, else as JSON."""
    request = urllib.request.Request(  # noqa: S310 -- loopback http only
        url,
        data=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 -- loopback http only
            return response.status, dict(response.headers.items()), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read().decode()


def launch(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start `command` with its output appended to `log` and nothing on its standard input."""
    with log.open("ab") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def await_health(
    process: subprocess.Popen[bytes],
    url: str,
    *,
    what: str,
    timeout: float,
    error: type[Exception],
    tail: Callable[[], str],
) -> None:
    """Wait until GET `url` answers 200; `error`, with the log's tail, if `process` exits or `timeout` runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise error(f"{what} exited with {process.returncode}:\n{tail()}")
        if http_get(url)[0] == 200:
            return
        time.sleep(0.1)
    raise error(f"{what} was not healthy within {timeout:.0f} s:\n{tail()}")
