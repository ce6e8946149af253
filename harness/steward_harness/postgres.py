"""A real PostgreSQL server on loopback for tests: a fresh cluster in a temporary directory, a free port,
a readiness wait, and a clean stop that keeps the logs when asked."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from steward_harness.servers import STARTUP_TIMEOUT, Server, free_ports, halt

# Where Debian and Ubuntu put the server binaries; they are not on PATH there.
PACKAGED_BINARIES = Path("/usr/lib/postgresql")
# PostgreSQL refuses to run as root, so as root the server runs as this account (the packages create it).
SERVER_ACCOUNT = os.environ.get("STEWARD_POSTGRES_ACCOUNT", "postgres")
NEEDED = ("initdb", "postgres", "pg_isready", "createdb")


class _Account(TypedDict):
    """Who a child process runs as: subprocess's user, group and extra_groups (None: as ourselves)."""

    user: int | None
    group: int | None
    extra_groups: list[int] | None


class PostgresError(RuntimeError):
    """The server could not be found, started or stopped; the message says why, with the log's tail."""


def find_binaries() -> Path:
    """The directory holding initdb, postgres, pg_isready and createdb: PATH first, then the newest packaged
    version."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    packaged = PACKAGED_BINARIES.glob("*/bin")
    candidates += sorted(packaged, key=lambda path: _version_key(path.parent.name), reverse=True)
    for directory in candidates:
        if all((directory / name).is_file() for name in NEEDED):
            return directory
    raise PostgresError(
        f"PostgreSQL server binaries ({', '.join(NEEDED)}) were not found on PATH or in "
        f"{PACKAGED_BINARIES}/*/bin: install them with `apt-get install postgresql`"
    )


@dataclass
class Postgres(Server):
    """One PostgreSQL server as a child process, with its data, socket-free config and log in `directory`."""

    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-postgres-")))
    database: str = "steward"
    user: str = "steward"
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _port: int = field(default=0, init=False)
    _account: tuple[int, int] | None = field(default=None, init=False)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """A SQLAlchemy URL for the test database (trust authentication on loopback: no password)."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self._port}/{self.database}"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def start(self) -> float:
        """Create a cluster, start the server, wait until it accepts connections and create the database;
        returns the seconds taken."""
        started = time.monotonic()
        binaries = find_binaries()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._account = _server_account()
        if self._account is not None:
            os.chown(self.directory, *self._account)
        data = self.directory / "data"
        self._run(
            [
                str(binaries / "initdb"),
                f"--pgdata={data}",
                f"--username={self.user}",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                # The cluster is thrown away at teardown; syncing it to disk would only slow the tests.
                "--no-sync",
            ]
        )
        self._port = free_ports(1)[0]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self._port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    # No Unix socket: the packaged default directory may not exist or be writable here.
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **self._as_account(),
            )
        self._wait(binaries)
        self._run(
            [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(self._port), "-U", self.user, self.database]
        )
        return time.monotonic() - started

    def stop(self, keep: bool = False) -> None:
        """Stop the server (fast shutdown: open sessions are ended); remove the directory unless `keep`."""
        process, self._process = self._process, None
        # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client to disconnect.
        halt(process, signal.SIGINT)
        if not keep:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _as_account(self) -> _Account:
        if self._account is None:
            return {"user": None, "group": None, "extra_groups": None}
        uid, gid = self._account
        # Drop root's supplementary groups too: the server must hold no privilege of ours.
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run(self, command: list[str]) -> None:
        with self.log.open("ab") as log:
            finished = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
                timeout=STARTUP_TIMEOUT,
                **self._as_account(),
            )
        if finished.returncode != 0:
            raise PostgresError(f"{Path(command[0]).name} exited with {finished.returncode}:\n{self._tail()}")

    def _wait(self, binaries: Path) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        probe = [str(binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self._port), "-U", self.user]
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise PostgresError(f"postgres exited with {code}:\n{self._tail()}")
            if subprocess.run(probe, check=False, stdin=subprocess.DEVNULL).returncode == 0:
                return
            time.sleep(0.1)
        raise PostgresError(f"postgres not ready after {STARTUP_TIMEOUT:.0f} s:\n{self._tail()}")

    def _tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log})"


def _server_account() -> tuple[int, int] | None:
    """The (uid, gid) the server must run as, or None to run it as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root and there is no '{SERVER_ACCOUNT}' account to run it as: "
            "create one (`apt-get install postgresql` does), set STEWARD_POSTGRES_ACCOUNT, or run as a normal user"
        ) from None
    return account.pw_uid, account.pw_gid


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))
