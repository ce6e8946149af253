"""The Docker engine Steward's images are built and checked in (one that already answers, or a dockerd of its own
in the cache), and the digest of its inputs each image is labelled with."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from steward_harness import binaries, servers
from steward_harness.binaries import BuildError

# Each image carries the digest of everything it was built from: a build is skipped exactly when that is unchanged.
INPUTS_LABEL = "dev.steward.inputs"
# The oom_score_adj a dockerd of its own sets for itself and its containerd. Its default, -500, is a lowering that
# needs CAP_SYS_RESOURCE, which root may lack (as in a container); 0 asks for nothing. Containers keep Docker's
# default 0, which their shim (containerd's score + 1) may set without that capability.
OOM_SCORE_ADJUST = "0"
START_TIMEOUT = 60.0


class Engine(servers.Server):
    """A Docker engine: one that already answers (DOCKER_HOST, else the default socket), or a dockerd of its own
    with its data root in the cache, which adds no interfaces, routes or firewall rules and is stopped with its
    containerd when done."""

    def __init__(self, cache: Path = binaries.CACHE_DIR) -> None:
        self.data_root = cache / "docker"
        self.state = cache / "dockerd"
        self.host = ""
        self._client = ""
        self._processes: list[subprocess.Popen[bytes]] = []
        self._lock: IO[str] | None = None

    def start(self) -> float:
        started = time.monotonic()
        self._client = installed("docker", "a Docker client")
        configured = os.environ.get("DOCKER_HOST")
        if configured:
            # A host the user named is the one they mean: never quietly replaced by another engine.
            if not self._answers(configured):
                raise BuildError(f"DOCKER_HOST={configured} does not answer `docker version`")
            self.host = configured
        elif Path("/var/run/docker.sock").exists() and self._answers("unix:///var/run/docker.sock"):
            self.host = "unix:///var/run/docker.sock"
        else:
            self._start_own()
        binaries.say(f"Docker engine at {self.host} ({time.monotonic() - started:.1f} s)")
        return time.monotonic() - started

    def stop(self, keep: bool = False) -> None:
        for process in reversed(self._processes):
            servers.halt(process)
        self._processes.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def docker(self, *args: str, stdin: IO[bytes] | None = None, timeout: float = 1800) -> str:
        """Run the Docker client against this engine; BuildError with its output if it fails."""
        result = self.attempt(*args, stdin=stdin, timeout=timeout)
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-40:])
            raise BuildError(f"docker {args[0]} failed (exit {result.returncode}):\n{output}")
        return result.stdout

    def inspect(self, reference: str) -> dict[str, Any] | None:
        """`docker image inspect` of `reference`, or None when the engine has no such image."""
        result = self.attempt("image", "inspect", reference, timeout=60)
        if result.returncode != 0:
            return None
        found: list[dict[str, Any]] = json.loads(result.stdout)
        return found[0]

    def inputs(self, reference: str) -> str | None:
        """The inputs digest `reference` was built from, or None when there is no such image."""
        image = self.inspect(reference)
        return None if image is None else ((image.get("Config") or {}).get("Labels") or {}).get(INPUTS_LABEL)

    def _start_own(self) -> None:
        dockerd = installed("dockerd", "the Docker daemon (Debian: apt-get install docker.io)")
        containerd = installed("containerd", "containerd (Debian: apt-get install containerd)")
        self.state.mkdir(parents=True, exist_ok=True)
        # One dockerd per data root: a second build waits for the first rather than fighting over it.
        self._lock = (self.state / "lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            binaries.say(f"waiting for another build using the Docker engine in {self.state}")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        host = f"unix://{self.state / 'docker.sock'}"
        if self._answers(host):
            raise BuildError(
                f"a dockerd from an earlier run still answers at {host}: stop it (its pid is in "
                f"{self.state / 'dockerd.pid'}) and run again"
            )
        log = self.state / "engine.log"
        log.write_text("")
        binaries.say(f"starting dockerd (data root {self.data_root}; log {log})")
        # A containerd of its own: dockerd would otherwise adopt any containerd on the default socket, such as a
        # node's, and stop working when that one stops.
        config = self.state / "containerd.toml"
        config.write_text(containerd_config(self.data_root / "containerd", self.state))
        self._processes.append(servers.launch([containerd, "--config", str(config)], log, dict(os.environ)))
        self._await(lambda: _listens(self.state / "containerd.sock"), "containerd", log)
        # A configuration file of its own, so a daemon.json in /etc/docker cannot change what this dockerd does; the
        # trust key dockerd 20.10 keeps (no flag sets its path) would otherwise be written to /etc/docker/key.json.
        (self.state / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(self.state / "key.json")}))
        self._processes.append(
            servers.launch(dockerd_command(dockerd, self.data_root, self.state), log, dict(os.environ))
        )
        self._await(lambda: self._answers(host), "dockerd", log)
        self.host = host

    def _await(self, ready: Callable[[], bool], what: str, log: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if self._processes[-1].poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise BuildError(f"{what} did not start (its log, {log}, ends):\n{tail}")
            time.sleep(0.2)

    def _answers(self, host: str) -> bool:
        return self.attempt("version", "--format", "{{.Server.Version}}", host=host, timeout=20).returncode == 0

    def attempt(
        self, *args: str, host: str = "", stdin: IO[bytes] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run the Docker client against this engine (or `host`) and return what happened, failed or not."""
        # The classic builder: it needs no buildx plugin, and it resolves FROM against the engine's own images.
        env = {**os.environ, "DOCKER_HOST": host or self.host, "DOCKER_BUILDKIT": "0"}
        try:
            return subprocess.run(
                [self._client, *args],
                env=env,
                stdin=stdin,
                capture_output=True,
                encoding="utf-8",
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise BuildError(f"docker {args[0]} did not finish within {timeout:.0f} s") from error


def containerd_config(root: Path, state: Path) -> str:
    """containerd's configuration: everything under `root` and `state`, and only what dockerd needs of it."""
    return (
        "version = 2\n"
        f'root = "{root}"\n'
        f'state = "{state / "containerd"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        "[grpc]\n"
        f'  address = "{state / "containerd.sock"}"\n'
        # Its default is /opt/containerd, outside the cache.
        '[plugins."io.containerd.internal.v1.opt"]\n'
        f'  path = "{state / "opt"}"\n'
    )


def dockerd_command(dockerd: str, data_root: Path, state: Path) -> list[str]:
    """dockerd on its own socket and containerd, with no bridge, no forwarding and no iptables rules: builds and
    checks run with --network=none, so the host's interfaces, routes and firewall stay as they are."""
    return [
        dockerd,
        f"--host=unix://{state / 'docker.sock'}",
        f"--containerd={state / 'containerd.sock'}",
        f"--data-root={data_root}",
        f"--exec-root={state / 'exec'}",
        f"--pidfile={state / 'dockerd.pid'}",
        f"--config-file={state / 'daemon.json'}",
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        f"--oom-score-adjust={OOM_SCORE_ADJUST}",
    ]


def inputs_digest(inputs: Iterable[tuple[str, bytes]]) -> str:
    """One sha256 over named inputs, each framed by its name and length so no two different sets hash alike."""
    digest = hashlib.sha256()
    for name, content in inputs:
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def installed(name: str, what: str) -> str:
    """The path of the program `name` on PATH; BuildError saying what it is when it is missing."""
    found = shutil.which(name)
    if found is None:
        raise BuildError(f"{name} is not on PATH; it is {what}")
    return found


def _listens(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as client:
        try:
            client.connect(str(path))
        except OSError:
            return False
        return True
