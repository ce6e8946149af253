"""A real Apache Kafka broker for tests: one KRaft node (broker and controller in one process) run from Kafka's
Maven Central jars, fetched once into a cache outside the repository, on free ports of loopback (or of another local
address, for pods on a node to reach it) in a temporary directory, with a readiness wait and a clean stop that keeps
the logs when asked."""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from steward_harness import binaries
from steward_harness.servers import STARTUP_TIMEOUT, STOP_TIMEOUT, Server, free_ports

# The Kafka release the tests run; any 4.x release (KRaft only, log4j 2) runs the same way.
KAFKA_VERSION = os.environ.get("STEWARD_KAFKA_VERSION", "4.3.2")
# Pinned so that what a fetch does never depends on the Maven release installed; 3.8.1 runs on Maven 3.6.3 and newer.
DEPENDENCY_PLUGIN_VERSION = "3.8.1"
# The broker logs through slf4j 1.x; Maven Central's kafka_2.13 ships no binding for it, and without one the broker
# says nothing at all. This one routes slf4j 1.x into log4j 2, at the log4j version the broker depends on.
LOGGING_BINDING = "org.apache.logging.log4j:log4j-slf4j-impl"
MANIFEST = "jars.txt"
HEAP = "512m"

_RELEASE = re.compile(r"\d+\.\d+\.\d+")
_LOG4J_API = re.compile(r"log4j-api-(\d+\.\d+\.\d+)\.jar")
# What the clients log (connection attempts while the broker starts, retries) goes here, not to stderr.
_CLIENT_LOG = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The broker's jars could not be fetched, or the broker could not be started; the message says why, with the
    log's tail when the broker ran."""


def check_version(version: str) -> str:
    """Return `version` if it names a Kafka release (4.3.2), else raise BrokerError."""
    if not _RELEASE.fullmatch(version):
        raise BrokerError(f"not a Kafka release version: {version!r} (expected MAJOR.MINOR.PATCH, such as 4.3.2)")
    return version


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """Where the jars of Kafka `version` are cached (in `lib/`), with the pom that fetched them and their list."""
    return binaries.CACHE_DIR / "kafka" / check_version(version)


def fetch_pom(version: str) -> str:
    """A pom whose only dependency is the broker, kafka_2.13 at `version`, with the dependency plugin pinned."""
    return f"""\
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>invalid.steward</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>{check_version(version)}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{DEPENDENCY_PLUGIN_VERSION}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def logging_binding(jars: list[str]) -> str:
    """The Maven coordinates of the slf4j binding that matches the log4j 2 API among `jars` (file names)."""
    versions = sorted({match[1] for name in jars if (match := _LOG4J_API.fullmatch(name))})
    if len(versions) != 1:
        found = ", ".join(versions) or "none"
        raise BrokerError(f"expected the broker to depend on one log4j-api version, found {found}")
    return f"{LOGGING_BINDING}:{versions[0]}"


def is_complete(home: Path) -> bool:
    """Whether `home` holds every jar its manifest lists (a fetch writes the manifest last)."""
    manifest = home / MANIFEST
    if not manifest.is_file():
        return False
    names = manifest.read_text().split()
    return bool(names) and all((home / "lib" / name).is_file() for name in names)


def ensure_jars(version: str = KAFKA_VERSION) -> Path:
    """The directory of the broker's jars for `version`, fetching them first unless the cache holds them all."""
    home = kafka_home(version)
    if not is_complete(home):
        fetch(version)
    return home / "lib"


def fetch(version: str = KAFKA_VERSION) -> None:
    """Fetch kafka_2.13 `version`, its runtime dependencies and the logging binding from Maven Central into a work
    directory, then move it into the cache in one rename: a half-fetched cache is never used."""
    home = kafka_home(version)
    started = time.monotonic()
    binaries.say(f"fetching Apache Kafka {version} from Maven Central (once; cached in {home.parent})")
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent, prefix=".fetch-") as work:
        staged = Path(work) / version
        lib = staged / "lib"
        lib.mkdir(parents=True)
        (staged / "pom.xml").write_text(fetch_pom(version))
        binaries.say(f"resolving org.apache.kafka:kafka_2.13:{version} and its runtime dependencies")
        mvn("dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={lib}", cwd=staged)
        binding = logging_binding([path.name for path in lib.glob("*.jar")])
        binaries.say(f"adding the logging binding {binding}")
        mvn("dependency:copy", f"-Dartifact={binding}", f"-DoutputDirectory={lib}", cwd=staged)
        jars = sorted(path.name for path in lib.glob("*.jar"))
        (staged / MANIFEST).write_text("".join(f"{name}\n" for name in jars))
        # Another fetch of the same version may have finished first (a broker may be running from it): its copy is as
        # good as this one. What a fetch left unfinished, or a jar since deleted, is replaced.
        if not is_complete(home):
            shutil.rmtree(home, ignore_errors=True)
            try:
                staged.rename(home)
            except OSError:
                if not is_complete(home):
                    raise
    binaries.say(f"fetched {len(jars)} jars in {time.monotonic() - started:.0f} s: {home / 'lib'}")


def mvn(*args: str, cwd: Path) -> str:
    """Run Maven quietly in `cwd`; its output, or BrokerError with the output's tail."""
    maven = shutil.which("mvn")
    if maven is None:
        raise BrokerError(
            "Maven (mvn) is not on PATH; it is needed once to fetch the broker's jars: apt-get install maven"
        )
    command = [maven, "--batch-mode", "--quiet", "-Dstyle.color=never", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-40:])
        raise BrokerError(f"mvn {' '.join(args)} failed (exit {result.returncode}):\n{output}")
    return result.stdout


def find_java() -> Path:
    """The java launcher: $JAVA_HOME/bin/java when JAVA_HOME is set, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        launcher = Path(java_home) / "bin" / "java"
        if launcher.is_file():
            return launcher
        raise BrokerError(f"JAVA_HOME is {java_home}, but {launcher} does not exist")
    on_path = shutil.which("java")
    if on_path is None:
        raise BrokerError("java was not found on PATH: Kafka 4 needs Java 17 or newer (apt-get install openjdk-17-jre)")
    return Path(on_path)


def server_properties(*, broker_port: int, controller_port: int, data: Path, host: str = "127.0.0.1") -> str:
    """The configuration of a single KRaft node on `host` (loopback by default) that serves transactions
    (exactly-once) on its own."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{broker_port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data),
        # Tests create their topics, so a misspelt name fails instead of quietly making a new topic.
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        # One node cannot hold the three replicas the internal topics ask for by default.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # One partition each instead of fifty: the first group and the first transaction start in a blink.
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.num.partitions": "1",
        # A group's first member is assigned its partitions at once instead of after three seconds.
        "group.initial.rebalance.delay.ms": "0",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def log4j_config(log: Path) -> str:
    """A log4j 2 configuration that writes what the broker logs at INFO and above to `log`, less the full listing of
    every configuration it builds (hundreds of lines that would fill the tail an error shows; server.properties holds
    what was set)."""
    return (
        "status = warn\n"
        "appender.file.type = File\n"
        "appender.file.name = file\n"
        f"appender.file.fileName = {log}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = info\n"
        "rootLogger.appenderRef.file.ref = file\n"
        "logger.config.name = org.apache.kafka.common.config.AbstractConfig\n"
        "logger.config.level = warn\n"
    )


def cluster_id() -> str:
    """A fresh cluster id as Kafka writes one: a random UUID in URL-safe base64, never starting with a dash (the
    tools would read it as an option)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass
class Kafka(Server):
    """One Kafka broker (a single KRaft node) as a child process in its own session; its configuration, data and
    logs live in `directory`."""

    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-kafka-")))
    version: str = KAFKA_VERSION
    host: str = "127.0.0.1"
    """The address the broker listens on and advertises: loopback, or a node's address for pods to reach it."""
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _broker_port: int = field(default=0, init=False)
    _controller_port: int = field(default=0, init=False)

    @property
    def bootstrap(self) -> str:
        """The address clients bootstrap from ("HOST:PORT")."""
        return f"{self.host}:{self._broker_port}"

    @property
    def log(self) -> Path:
        """What the broker logs (log4j)."""
        return self.directory / "kafka.log"

    @property
    def output(self) -> Path:
        """What the JVM itself prints (start-up failures, crashes) and the storage tool's output."""
        return self.directory / "java.out"

    def client_config(self) -> dict[str, str | int | float | bool]:
        """The configuration every confluent_kafka client of this broker starts from."""
        return {"bootstrap.servers": self.bootstrap}

    def admin(self) -> AdminClient:
        """An admin client for this broker; keep it referenced until the futures it returns are done (a client
        dropped meanwhile never completes them)."""
        return AdminClient(self.client_config(), logger=_CLIENT_LOG)

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 30.0) -> None:
        """Create topic `name` and wait until every partition has a leader, so producing to it at once succeeds."""
        admin = self.admin()
        created = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        created[name].result(timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            topic = admin.list_topics(name, timeout=timeout).topics.get(name)
            leaders = [] if topic is None or topic.error else [p.leader for p in topic.partitions.values()]
            if len(leaders) == partitions and min(leaders) >= 0:
                return
            time.sleep(0.05)
        raise BrokerError(f"topic {name} had no leader for each of its {partitions} partitions within {timeout:.0f} s")

    def start(self) -> float:
        """Format the node's storage, start the broker and wait until it serves metadata; returns the seconds
        taken (the jars are fetched first when the cache lacks them)."""
        started = time.monotonic()
        lib = ensure_jars(self.version)
        java = find_java()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._broker_port, self._controller_port = free_ports(2, host=self.host)
        config = self.directory / "server.properties"
        config.write_text(
            server_properties(
                broker_port=self._broker_port,
                controller_port=self._controller_port,
                data=self.directory / "data",
                host=self.host,
            )
        )
        logging_config = self.directory / "log4j2.properties"
        logging_config.write_text(log4j_config(self.log))
        jvm = [
            str(java),
            f"-Xmx{HEAP}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={logging_config}",
            "-cp",
            str(lib / "*"),
        ]
        with self.output.open("ab") as output:
            formatted = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "--cluster-id", cluster_id(), "--config", str(config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=False,
                timeout=STARTUP_TIMEOUT,
            )
            if formatted.returncode != 0:
                raise BrokerError(f"formatting the storage exited with {formatted.returncode}:\n{self._tail()}")
            self._process = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session and process group, so that stop() reaches everything it started.
                start_new_session=True,
            )
        self._wait()
        return time.monotonic() - started

    def stop(self, keep: bool = False) -> None:
        """Stop the broker (SIGTERM to its process group, SIGKILL if it has not exited within STOP_TIMEOUT);
        remove the directory unless `keep`."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        if not keep:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _wait(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        admin: AdminClient | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise BrokerError(f"kafka exited with {code}:\n{self._tail()}")
            # The client is made once the port is open, so that it does not retry against a closed one meanwhile.
            if admin is None and _accepts(self.host, self._broker_port):
                admin = self.admin()
            if admin is not None:
                try:
                    if admin.list_topics(timeout=1).brokers:
                        return
                except KafkaException:
                    pass
            time.sleep(0.1)
        raise BrokerError(f"kafka was not ready within {STARTUP_TIMEOUT:.0f} s:\n{self._tail()}")

    def _tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.output, self.log):
            text = path.read_text(errors="replace") if path.exists() else ""
            if text.strip():
                parts.append(f"--- {path.name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts) + f"\n(logs: {self.output}, {self.log})"


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _signal_group(process: subprocess.Popen[bytes], how: signal.Signals) -> None:
    """Send `how` to the process group that `process` leads; nothing if it is gone already."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, how)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steward_harness.kafka",
        description="The Apache Kafka broker the integration tests run: a single KRaft node from Maven Central's jars.",
        epilog=f"Cached in {binaries.CACHE_DIR / 'kafka'}; set STEWARD_CACHE_DIR to move the cache and "
        f"STEWARD_KAFKA_VERSION to run another Kafka 4 release (now {KAFKA_VERSION}).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "fetch",
        help="fetch the broker's jars (needs mvn and Java) unless cached; print their directory",
        description=f"Fetch org.apache.kafka:kafka_2.13:{KAFKA_VERSION}, its runtime dependencies and a logging "
        "binding from Maven Central with mvn, once; print the directory of the jars.",
    )
    parser.parse_args(argv)
    try:
        print(ensure_jars())
    except BrokerError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
