"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager, with RBAC and an
admin kubeconfig.

Like controller-runtime's envtest it needs no node: the API server brings admission, validation, defaulting and
storage, which is what an operator's correctness depends on. Unlike envtest, Kubernetes' own controllers run too, as
in any cluster: garbage collection removes what a deleted owner leaves, the Job and CronJob controllers act on what
is applied, service accounts and their tokens exist.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from steward_harness import binaries, certificates
from steward_harness.servers import STARTUP_TIMEOUT, Server, free_ports, halt

LOOPBACK = "127.0.0.1"
# The controllers kube-controller-manager runs: every one a cluster runs by default.
CONTROLLERS = ("*",)
# Filled by clusterrole-aggregation alone (the API server creates it empty), so its rules show that controller runs.
_AGGREGATED_ROLE = "/apis/rbac.authorization.k8s.io/v1/clusterroles/view"
# Made by the serviceaccount controller; until it exists no pod in the namespace can be admitted.
_DEFAULT_ACCOUNT = "/api/v1/namespaces/default/serviceaccounts/default"


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message carries the tail of the failing server's log."""


@dataclass
class ControlPlane(Server):
    """etcd, kube-apiserver and kube-controller-manager as child processes, with everything they need in
    `directory`."""

    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-control-plane-")))
    version: str = binaries.KUBERNETES_VERSION
    address: str = LOOPBACK
    """Where the API server listens. A cluster with a node gives it the node's address, which pods reach through
    the `kubernetes` Service; on loopback that Service has no endpoints."""
    service_cidr: str = "10.0.0.0/24"
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    _api_port: int = field(default=0, init=False)
    _certificates: certificates.Pki | None = field(default=None, init=False)

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self._api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def start(self) -> float:
        """Start etcd, kube-apiserver and kube-controller-manager, and wait until each is ready; returns the seconds
        taken."""
        started = time.monotonic()
        paths = binaries.ensure_binaries(self.version)
        self.directory.mkdir(parents=True, exist_ok=True)
        # In-cluster clients reach the API server at the first address of the service range.
        service_address = str(ipaddress.ip_network(self.service_cidr).network_address + 1)
        pki = self._certificates = certificates.create(
            self.directory / "pki", addresses=(self.address, service_address)
        )
        kubelet_client = certificates.issue(
            pki, self.directory / "pki", "apiserver-kubelet-client", ("kube-apiserver-kubelet-client", "system:masters")
        )
        etcd_client, etcd_peer, self._api_port = free_ports(3)
        self._spawn(
            "etcd",
            [
                str(paths["etcd"]),
                "--name=steward",
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=steward=http://127.0.0.1:{etcd_peer}",
                # The data is thrown away at teardown; fsync would only slow every write.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_client}/health"))
        self._spawn(
            "kube-apiserver",
            [
                str(paths["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={self._api_port}",
                f"--cert-dir={self.directory / 'apiserver'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                # Node: a kubelet may read only what its own pods need.
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-certificate-authority={pki.ca_cert}",
                f"--kubelet-client-certificate={kubelet_client[0]}",
                f"--kubelet-client-key={kubelet_client[1]}",
                # A node's name resolves nowhere; its address is in its status.
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--allow-privileged=true",
                # On loopback, pods could not reach the address the `kubernetes` Service would point to.
                f"--endpoint-reconciler-type={'none' if self.address == LOOPBACK else 'lease'}",
                "--profiling=false",
            ],
        )
        context = self.ssl_context()
        self._wait("kube-apiserver", lambda: _http_ok(f"{self.server}/readyz", context))
        self._write_kubeconfig()
        self._spawn(
            "kube-controller-manager",
            [
                str(paths["kube-controller-manager"]),
                f"--kubeconfig={self.kubeconfig}",
                f"--controllers={','.join(CONTROLLERS)}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca_cert}",
                # Each controller acts as its own service account with its own bootstrap role, as in a real
                # cluster, rather than with the admin certificate that starts it.
                "--use-service-account-credentials",
                # Nothing here needs its metrics or health endpoints; readiness is read from the API instead.
                "--secure-port=0",
            ],
        )
        self._wait(
            "kube-controller-manager",
            lambda: (
                _has_rules(f"{self.server}{_AGGREGATED_ROLE}", context)
                and _http_ok(f"{self.server}{_DEFAULT_ACCOUNT}", context)
            ),
        )
        return time.monotonic() - started

    def stop(self, keep: bool = False) -> None:
        """Stop the servers, each before what it depends on; remove the directory unless `keep` (for a failed test's
        logs)."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            halt(self._processes.pop(name, None))
        if not keep:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _spawn(self, name: str, command: list[str]) -> None:
        with self.log(name).open("ab") as log:
            self._processes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        process = self._processes[name]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ControlPlaneError(f"{name} exited with {process.returncode}:\n{self._tail(name)}")
            if ready():
                return
            time.sleep(0.1)
        raise ControlPlaneError(f"{name} not ready after {STARTUP_TIMEOUT:.0f} s:\n{self._tail(name)}")

    def _tail(self, name: str, lines: int = 30) -> str:
        text = self.log(name).read_text(errors="replace") if self.log(name).exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log(name)})"

    @property
    def pki(self) -> certificates.Pki:
        """The cluster's CA and the certificates issued from it."""
        if self._certificates is None:
            raise ControlPlaneError("the control plane has not been started")
        return self._certificates

    def ssl_context(self) -> ssl.SSLContext:
        """TLS for talking to the API server as cluster admin."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at API `path` as cluster admin, or None when it is not there (yet)."""
        try:
            # Only ever this control plane's own URL.
            with urllib.request.urlopen(f"{self.server}{path}", timeout=5, context=self.ssl_context()) as response:  # noqa: S310
                found: dict[str, Any] = json.loads(response.read())
                return found
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return None

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(self.kubeconfig_for(self.pki.admin_cert, self.pki.admin_key))
        self.kubeconfig.chmod(0o600)

    def kubeconfig_for(self, cert: Path, key: Path) -> str:
        """A kubeconfig for this control plane that authenticates with the client certificate `cert`."""

        def data(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "steward-local",
                    "cluster": {"server": self.server, "certificate-authority-data": data(self.pki.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": "steward-admin",
                    "user": {
                        "client-certificate-data": data(cert),
                        "client-key-data": data(key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "steward-local",
                    "context": {"cluster": "steward-local", "user": "steward-admin", "namespace": "default"},
                }
            ],
            "current-context": "steward-local",
        }
        return yaml.safe_dump(config, sort_keys=False)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        # Only ever the loopback URLs built in this module.
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            body = response.read()
            return response.status == 200 and (not url.endswith("/health") or json.loads(body).get("health") == "true")
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False


def _has_rules(url: str, context: ssl.SSLContext) -> bool:
    """Whether the ClusterRole at `url` holds any rule yet."""
    try:
        # Only ever the loopback URLs built in this module.
        with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
            return bool(json.loads(response.read()).get("rules"))
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False
