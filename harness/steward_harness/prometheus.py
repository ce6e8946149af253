"""A real Prometheus server for tests: its own data directory, a one-second scrape interval, and targets a test adds
and removes while it runs (file-based service discovery), or the pods of a cluster found the way the chart's
conventions say (Kubernetes service discovery)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from steward_harness import upstream
from steward_harness.servers import STARTUP_TIMEOUT, Server, free_ports, halt, http_get

# Debian's package (`apt-get install prometheus`) puts it here; PATH is searched first.
PACKAGED_BINARY = Path("/usr/bin/prometheus")
JOB = "steward"


class PrometheusError(RuntimeError):
    """The server could not be found or started, or did not scrape in time; the message carries the log's tail."""


def find_binary() -> Path:
    """The prometheus server binary: PATH first, then Debian's."""
    on_path = shutil.which("prometheus")
    if on_path:
        return Path(on_path)
    if PACKAGED_BINARY.is_file():
        return PACKAGED_BINARY
    raise PrometheusError(
        "prometheus was not found on PATH or at /usr/bin: install it with `apt-get install prometheus`"
    )


@dataclass
class Prometheus(Server):
    """One Prometheus server as a child process; config, targets, data and log live in `directory`, so a stop
    (with `keep=True`) and a start carry on with the same data, on the same port."""

    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-prometheus-")))
    scrape_interval: float = 1.0
    port: int = 0
    host: str = "127.0.0.1"
    """The address it listens on: loopback, or a node's address for pods to reach it."""
    kubeconfig: Path | None = None
    """When given, also scrape every pod of that cluster annotated `prometheus.io/scrape: "true"` (on the
    annotated port and path), labelled with its `namespace` and `pod`; the server is then the pinned Prometheus
    built from its module (`python -m steward_harness.upstream prometheus`)."""
    _targets: dict[str, dict[str, str]] = field(default_factory=dict, init=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "prometheus.log"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> float:
        """Start the server (on the port it had before, if any) and wait until it is ready; returns the seconds
        taken."""
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_ports(1, host=self.host)[0]
        self._write_config()
        self._write_targets()
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._process.returncode}:\n{self.tail()}")
            if self._get("/-/ready")[0] == 200:
                return time.monotonic() - started
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {STARTUP_TIMEOUT:.0f} s:\n{self.tail()}")

    def _command(self) -> list[str]:
        common = [
            f"--config.file={self.directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address={self.host}:{self.port}",
        ]
        if self.kubeconfig is not None:  # Debian's build leaves Kubernetes discovery out
            return [str(upstream.ensure_tool("prometheus")), *common]
        # Consoles are not served here; the packaged defaults may not exist.
        consoles = [f"--web.console.templates={self.directory}", f"--web.console.libraries={self.directory}"]
        return [str(find_binary()), *common, *consoles]

    def stop(self, keep: bool = False) -> None:
        """Stop the server; remove its data and log unless `keep` (a later start then carries on with them)."""
        self.resume()
        process, self._process = self._process, None
        halt(process)
        if not keep:
            shutil.rmtree(self.directory, ignore_errors=True)

    def freeze(self) -> None:
        """Suspend the server (SIGSTOP): it keeps its port and accepts connections but answers nothing, as a
        hung server does."""
        if self.running and self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a frozen server run again."""
        if self.running and self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def add_target(self, address: str, **labels: str) -> None:
        """Scrape `address` (host:port, path /metrics), with extra target labels. Prometheus passes target
        changes on every 5 s, and so scrapes a target about 5 s after this (or after a start) at the earliest:
        add the targets a test needs before starting, even those that will only listen later."""
        self._targets[address] = labels
        self._write_targets()

    def remove_target(self, address: str) -> None:
        """Stop scraping `address` (within about 5 s, see add_target); its series go stale, as when a pod goes
        away."""
        self._targets.pop(address, None)
        self._write_targets()

    def last_scrape(self, address: str) -> float | None:
        """When the newest successful scrape of `address` that the server has stored began (unix seconds)."""
        # Raw samples of `up` (1: the scrape succeeded), stored in the same commit as what was scraped.
        query = f'up{{job="{JOB}",instance="{address}"}}[1m]'
        status, body = self._get(f"/api/v1/query?{urllib.parse.urlencode({'query': query})}")
        if status != 200:
            return None
        succeeded = [
            float(moment)
            for series in json.loads(body)["data"]["result"]
            for moment, value in series["values"]
            if value == "1"
        ]
        return max(succeeded, default=None)

    def wait_scraped(self, address: str, after: float | None = None, timeout: float = 15.0) -> float:
        """Wait until a scrape of `address` that began after `after` (default: now) is stored; returns when it
        began. Everything the target exposed before `after` is then in the server."""
        after = time.time() if after is None else after
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            scraped = self.last_scrape(address)
            if scraped is not None and scraped > after:
                return scraped
            time.sleep(0.05)
        raise PrometheusError(f"{address} not scraped within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log})"

    def _write_config(self) -> None:
        interval = f"{round(self.scrape_interval * 1000)}ms"
        jobs: list[dict[str, object]] = [
            {
                "job_name": JOB,
                # The file is watched, so a change is seen at once; the refresh is a fallback.
                "file_sd_configs": [{"files": [str(self.directory / "targets.json")], "refresh_interval": "1s"}],
            }
        ]
        if self.kubeconfig is not None:
            jobs.append(_annotated_pods(self.kubeconfig))
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "scrape_configs": jobs,
        }
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(config))

    def _write_targets(self) -> None:
        groups = [{"targets": [address], "labels": labels} for address, labels in self._targets.items()]
        # Written aside and renamed: the server must never read half a file.
        partial = self.directory / "targets.json.tmp"
        partial.write_text(json.dumps(groups))
        os.replace(partial, self.directory / "targets.json")

    def _get(self, path: str) -> tuple[int, str]:
        return http_get(f"{self.url}{path}")


def _annotated_pods(kubeconfig: Path) -> dict[str, object]:
    """The scrape job the chart's conventions ask of a cluster's Prometheus: every pod annotated
    `prometheus.io/scrape: "true"`, on its `prometheus.io/port` and `prometheus.io/path`, labelled with its
    namespace and pod."""
    return {
        "job_name": "kubernetes-pods",
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                "regex": "true",
                "action": "keep",
            },
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed", "action": "drop"},
            {
                "source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                "regex": r"([^:]+)(?::\d+)?;(\d+)",
                "replacement": "$1:$2",
                "target_label": "__address__",
            },
            {
                "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
                "regex": "(.+)",
                "target_label": "__metrics_path__",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }
