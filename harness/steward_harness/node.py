"""A real Kubernetes node on this machine: containerd, kubelet, kube-proxy and kube-scheduler against a local
control plane, with pod and service ranges that live only on a bridge the node creates.

What the node adds to the host it removes again at stop: the node address on `lo`, the bridge, a blackhole route
for its whole range (so no pod or service address ever leaves through the machine's own interface), the iptables
rules it and kube-proxy wrote, IP forwarding, and every process, mount and network namespace of its pods.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from steward_harness import addons, binaries, certificates
from steward_harness.controlplane import ControlPlane
from steward_harness.node_configs import cni_config, containerd_config, kubelet_config
from steward_harness.servers import Server, free_ports, halt

NAME = "steward-node"
# One private /16 for everything the node addresses; the host routes all of it to a blackhole, so only the more
# specific routes below (the node's own address on lo, the pod bridge) carry traffic.
RANGE = ipaddress.ip_network(os.environ.get("STEWARD_NODE_RANGE", "10.213.0.0/16"))
NODE_IP = str(RANGE.network_address + 1)
POD_CIDR = str(ipaddress.ip_network(f"{RANGE.network_address + 64 * 256}/24"))
SERVICE_CIDR = str(ipaddress.ip_network(f"{RANGE.network_address + 128 * 256}/24"))
BRIDGE = "steward0"
READY_TIMEOUT = 120.0
DRAIN_TIMEOUT = 60.0


class NodeError(RuntimeError):
    """The node did not come up or could not be taken down cleanly; the message says which part and why."""


@dataclass
class HostChanges:
    """Each change made to the host, recorded as it is made so that `undo` reverts exactly those, newest first."""

    _undo: list[tuple[str, list[str]]] = field(default_factory=list)

    def run(self, command: list[str], undo: list[str] | None = None) -> None:
        _host(command)
        if undo is not None:
            self._undo.append((" ".join(command), undo))

    def sysctl(self, key: str, value: str) -> None:
        path = Path("/proc/sys") / key.replace(".", "/")
        before = path.read_text().strip()
        if before != value:
            path.write_text(value)
            self._undo.append((f"sysctl {key}={value}", ["sysctl", "-q", "-w", f"{key}={before}"]))

    def undo(self) -> list[str]:
        """Revert every recorded change; return what could not be reverted (already gone is fine)."""
        failures = []
        while self._undo:
            made, command = self._undo.pop()
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0 and "No such" not in result.stderr and "does not exist" not in result.stderr:
                failures.append(f"{made}: {result.stderr.strip()}")
        return failures


@dataclass
class HostNetwork(Server):
    """The host side of a node's network, set up before the control plane (whose API server listens on NODE_IP)
    and undone after everything else: the node address, the blackhole route, the bridge, forwarding for the bridge
    alone, and whatever iptables rules appeared while it was up (kube-proxy's and the kubelet's)."""

    _host: HostChanges = field(default_factory=HostChanges, init=False)
    _iptables_before: dict[str, set[str]] = field(default_factory=dict, init=False)

    def start(self) -> HostNetwork:
        if os.geteuid() != 0:
            raise NodeError("a node needs root: it runs containers and sets up their network")
        host = self._host
        host.run(
            ["ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"], ["ip", "addr", "del", f"{NODE_IP}/32", "dev", "lo"]
        )
        host.run(["ip", "route", "add", "blackhole", str(RANGE)], ["ip", "route", "del", "blackhole", str(RANGE)])
        # The bridge plugin would create it on the first pod; made here so that its removal is recorded too.
        host.run(["ip", "link", "add", BRIDGE, "type", "bridge"], ["ip", "link", "del", BRIDGE])
        host.run(["ip", "link", "set", BRIDGE, "up"])
        # The host's own clients (the API server calling a webhook, kubectl, tests) reach Services too: their
        # addresses route onto the bridge, where kube-proxy's rules translate them to a pod's, never beyond.
        host.run(
            ["ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE], ["ip", "route", "del", SERVICE_CIDR, "dev", BRIDGE]
        )
        # Service traffic is translated on the host and forwarded back onto the bridge.
        host.sysctl("net.ipv4.ip_forward", "1")
        if not Path("/proc/sys/net/bridge").exists():
            host.run(["modprobe", "br_netfilter"])
        host.sysctl("net.bridge.bridge-nf-call-iptables", "1")
        # Forwarding is for the bridge alone: nothing from a pod is forwarded anywhere else, whatever the policy.
        rules = (
            ["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"],
            ["-i", BRIDGE, "-j", "DROP"],
            ["-o", BRIDGE, "-j", "DROP"],
        )
        for position, rule in enumerate(rules, start=1):
            host.run(["iptables", "-I", "FORWARD", str(position), *rule], ["iptables", "-D", "FORWARD", *rule])
        # Taken last: what appears after this is kube-proxy's and the kubelet's, removed at stop.
        self._iptables_before = _iptables_rules()
        return self

    def stop(self, keep: bool = False) -> None:
        """Undo every change; raises NodeError naming what could not be undone."""
        problems = _restore_iptables(self._iptables_before) if self._iptables_before else []
        self._iptables_before = {}
        problems += self._host.undo()
        if problems:
            raise NodeError("the node's network could not be undone entirely:\n" + "\n".join(problems))


@dataclass
class Node(Server):
    """One node registered with `plane`, which must listen on NODE_IP (ControlPlane(address=NODE_IP,
    service_cidr=SERVICE_CIDR)). `images` are `docker save` archives imported into the node's containerd; one
    of them must hold `sandbox_image`."""

    plane: ControlPlane
    images: tuple[Path, ...]
    sandbox_image: str
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-node-")))
    version: str = binaries.KUBERNETES_VERSION
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)

    @property
    def socket(self) -> Path:
        return self.directory / "containerd" / "containerd.sock"

    def log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def start(self) -> float:
        """Start containerd with the images, then kubelet, kube-proxy and the scheduler; wait until the node is
        Ready. The HostNetwork must be up. Returns the seconds taken."""
        started = time.monotonic()
        if self.plane.address != NODE_IP:
            raise NodeError(f"the control plane listens on {self.plane.address}; a node needs it on {NODE_IP}")
        paths = binaries.ensure_binaries(self.version, binaries.NODE_BINARIES)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cni()
        self._containerd()
        self._kubelet(paths["kubelet"])
        self._spawn(
            "kube-proxy",
            [
                str(paths["kube-proxy"]),
                f"--kubeconfig={self.plane.kubeconfig}",
                f"--hostname-override={NAME}",
                f"--cluster-cidr={POD_CIDR}",
                "--proxy-mode=iptables",
                f"--healthz-bind-address=127.0.0.1:{free_ports(1)[0]}",
                f"--metrics-bind-address=127.0.0.1:{free_ports(1)[0]}",
                # conntrack limits are the host's; the node only uses what is there.
                "--conntrack-max-per-core=0",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(paths["kube-scheduler"]),
                f"--kubeconfig={self.plane.kubeconfig}",
                f"--authentication-kubeconfig={self.plane.kubeconfig}",
                f"--authorization-kubeconfig={self.plane.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_ports(1)[0]}",
            ],
        )
        self._wait("kubelet", self._ready, READY_TIMEOUT)
        return time.monotonic() - started

    def stop(self, keep: bool = False) -> None:
        """Drain the pods (so their sandboxes and network namespaces are torn down by the runtime), stop every
        process and unmount what is left below the directory. Raises NodeError naming what could not be undone."""
        problems: list[str] = []
        # Without a scheduler, the pods controllers make in place of the deleted ones never come to this node.
        halt(self._processes.pop("kube-scheduler", None))
        if "kubelet" in self._processes and self._processes["kubelet"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._drain()
        for name in ("kubelet", "kube-proxy"):
            halt(self._processes.pop(name, None))
        self._remove_containers()
        halt(self._processes.pop("containerd", None))
        problems += _unmount_below(self.directory)
        # Kept for its logs: the runtime's image store (gigabytes) goes either way.
        shutil.rmtree(self.directory if not keep else self.directory / "containerd", ignore_errors=True)
        if problems:
            raise NodeError("the node could not undo everything it changed:\n" + "\n".join(problems))

    def _cni(self) -> None:
        config = cni_config(BRIDGE, POD_CIDR, self.directory / "cni" / "ipam")
        (self.directory / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        (self.directory / "cni" / "net.d" / "10-steward.conflist").write_text(json.dumps(config, indent=2))

    # -- containerd -------------------------------------------------------------------------------------------

    def _containerd(self) -> None:
        home = self.directory / "containerd"
        (home / "root").mkdir(parents=True, exist_ok=True)
        config = home / "config.toml"
        config.write_text(
            containerd_config(
                root=home / "root",
                state=home / "state",
                socket=self.socket,
                cni_config=self.directory / "cni" / "net.d",
                sandbox_image=self.sandbox_image,
            )
        )
        self._spawn("containerd", [_which("containerd"), f"--config={config}"])
        self._wait("containerd", lambda: self._ctr("version", check=False).returncode == 0, 30)
        for archive in self.images:
            self._ctr("images", "import", "--all-platforms", str(archive))

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [_which("ctr"), f"--address={self.socket}", "--namespace=k8s.io", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if check and result.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _remove_containers(self) -> None:
        """Kill and delete whatever containers the kubelet left (it is stopped by now)."""
        if "containerd" not in self._processes:
            return
        for task in self._ctr("tasks", "ls", "-q", check=False).stdout.split():
            self._ctr("tasks", "kill", "--signal=SIGKILL", task, check=False)
        for container in self._ctr("containers", "ls", "-q", check=False).stdout.split():
            self._ctr("tasks", "delete", "--force", container, check=False)
            self._ctr("containers", "delete", container, check=False)

    # -- kubelet ----------------------------------------------------------------------------------------------

    def _kubelet(self, binary: Path) -> None:
        home = self.directory / "kubelet"
        pki = self.plane.pki
        serving = certificates.issue(pki, home / "pki", "kubelet", (NAME, None), (NAME, NODE_IP))
        client = certificates.issue(pki, home / "pki", "kubelet-client", (f"system:node:{NAME}", "system:nodes"))
        kubeconfig = home / "kubeconfig"
        kubeconfig.write_text(self.plane.kubeconfig_for(*client))
        resolv = home / "resolv.conf"
        # For pods that ask for the node's own resolver (dnsPolicy Default): the cluster's, which forwards nowhere.
        dns = addons.dns_address(SERVICE_CIDR)
        resolv.write_text(f"nameserver {dns}\n")
        config = home / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                kubelet_config(
                    runtime=self.socket,
                    pod_logs=self.directory / "pod-logs",
                    ca=pki.ca_cert,
                    serving=serving,
                    resolv=resolv,
                    port=free_ports(1)[0],
                    healthz=free_ports(1)[0],
                    address=NODE_IP,
                    cluster_dns=dns,
                ),
                sort_keys=False,
            )
        )
        self._spawn(
            "kubelet",
            [
                str(binary),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={home / 'root'}",
                f"--hostname-override={NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

    def _ready(self) -> bool:
        node = self.plane.get(f"/api/v1/nodes/{NAME}")
        conditions = (node or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _drain(self) -> None:
        """Delete every pod and wait until the kubelet has stopped them all, so the runtime tears down their
        sandboxes and network namespaces itself."""
        kubectl = [shutil.which("kubectl") or "kubectl", f"--kubeconfig={self.plane.kubeconfig}"]
        subprocess.run(
            [*kubectl, "delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force", "--wait=false"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline and self._ctr("tasks", "ls", "-q", check=False).stdout.split():
            time.sleep(0.5)

    # -- processes --------------------------------------------------------------------------------------------

    def _spawn(self, name: str, command: list[str]) -> None:
        with self.log(name).open("ab") as log:
            self._processes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for running, process in self._processes.items():
                if process.poll() is not None:
                    raise NodeError(f"{running} exited with {process.returncode}:\n{self._tail(running)}")
            if ready():
                return
            time.sleep(0.5)
        raise NodeError(f"{name} not ready after {timeout:.0f} s:\n{self._tail(name)}")

    def _tail(self, name: str, lines: int = 40) -> str:
        text = self.log(name).read_text(errors="replace") if self.log(name).exists() else ""
        return "\n".join(text.splitlines()[-lines:]) + f"\n(full log: {self.log(name)})"


def host_state() -> dict[str, object]:
    """What a node may change on the host, read the way `ip`, iptables-save and /proc show it: equal before a
    node starts and after it stops, or something was left behind."""

    def lines(*command: str) -> list[str]:
        output = subprocess.run(command, capture_output=True, text=True, check=False).stdout
        # Router advertisements count their routes' lifetimes down: not a change anyone made.
        return sorted(re.sub(r" expires \d+sec", "", line) for line in output.splitlines())

    return {
        "addresses": lines("ip", "-br", "addr"),
        "routes": lines("ip", "route", "show", "table", "all"),
        "iptables": {table: sorted(rules) for table, rules in _iptables_rules().items()},
        "forwarding": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
        "mounts": sorted(line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()),
        "network namespaces": lines("ip", "netns", "list"),
    }


def _which(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if found is None:
        raise NodeError(
            f"{name} was not found; install it with: apt-get install containerd runc containernetworking-plugins"
        )
    return found


def _host(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NodeError(f"{' '.join(command)} failed: {result.stderr.strip()}")


_TABLES = ("filter", "nat", "mangle", "raw")


def _iptables_rules() -> dict[str, set[str]]:
    """Every chain and rule of each table, as iptables-save prints them."""
    rules = {}
    for table in _TABLES:
        saved = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=False).stdout
        rules[table] = {line for line in saved.splitlines() if line.startswith(("-A ", ":"))}
    return rules


def _restore_iptables(before: dict[str, set[str]]) -> list[str]:
    """Remove the chains, and the rules in older chains, that were added since `before`."""
    failures = []
    now = _iptables_rules()
    for table in _TABLES:
        added = now[table] - before[table]
        chains = {line[1:].split()[0] for line in added if line.startswith(":")}
        commands = [["-F", chain] for chain in chains]
        commands += [
            ["-D", *rule[1:]]
            for rule in map(shlex.split, sorted(line for line in added if line.startswith("-A ")))
            if rule[1] not in chains
        ]
        commands += [["-X", chain] for chain in chains]
        for command in commands:
            result = subprocess.run(["iptables", "-t", table, *command], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                failures.append(f"iptables -t {table} {shlex.join(command)}: {result.stderr.strip()}")
    return failures


def _unmount_below(directory: Path) -> list[str]:
    """Unmount every mount below `directory` (deepest first): overlay roots, network namespaces, volumes."""
    failures = []
    for target in sorted(_mounts_below(directory), key=len, reverse=True):
        result = subprocess.run(["umount", "--lazy", target], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            failures.append(f"umount {target}: {result.stderr.strip()}")
    return failures


def _mounts_below(directory: Path) -> Iterable[str]:
    prefix = f"{directory.resolve()}/"
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].encode().decode("unicode_escape")
        if target.startswith(prefix):
            yield target
