"""A whole local cluster on this machine: the host network, a control plane listening on the node's address, one
real node with Steward's images, and the add-ons (CoreDNS, KServe, Traefik); started in that order and stopped in
the reverse one."""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from steward_harness import addons, binaries, images, upstream
from steward_harness.controlplane import ControlPlane
from steward_harness.kubectl import Kubectl
from steward_harness.node import NODE_IP, SERVICE_CIDR, HostNetwork, Node
from steward_harness.servers import Server

T = TypeVar("T")

REPOSITORY = Path(__file__).resolve().parents[2]
# What a cluster runs besides Kubernetes itself, in the order it is installed.
ADDONS = ("coredns", "kserve", "traefik")


@dataclass
class LocalCluster(Server):
    """Everything `make cluster` and the end-to-end tests run. `timings` says where the start-up time went."""

    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="steward-cluster-")))
    components: tuple[str, ...] = ADDONS
    """The add-ons to install, by name."""
    timings: dict[str, float] = field(default_factory=dict, init=False)
    _network: HostNetwork | None = field(default=None, init=False)
    _plane: ControlPlane | None = field(default=None, init=False)
    _node: Node | None = field(default=None, init=False)
    _archives: dict[str, Path] = field(default_factory=dict, init=False)

    @property
    def plane(self) -> ControlPlane:
        if self._plane is None:
            raise RuntimeError("the cluster has not been started")
        return self._plane

    @property
    def node(self) -> Node:
        if self._node is None:
            raise RuntimeError("the cluster has not been started")
        return self._node

    @property
    def kubectl(self) -> Kubectl:
        return Kubectl(self.plane.kubeconfig)

    def prepare(self) -> None:
        """Build or reuse everything the cluster runs (images, binaries, CRDs), changing nothing on the host's
        network. `start` does it first if not done."""
        if not self._archives:
            self._archives = self._timed("images", lambda: images.export_node_images(self.directory / "images"))
            self._timed("binaries", lambda: binaries.ensure_binaries(names=binaries.BINARIES + binaries.NODE_BINARIES))
            self._timed("crds", upstream.crds)

    def start(self) -> float:
        started = time.monotonic()
        self.prepare()
        self._network = HostNetwork().start()
        self._plane = ControlPlane(
            directory=self.directory / "control-plane", address=NODE_IP, service_cidr=SERVICE_CIDR
        )
        self._timed("control plane", self._plane.start)
        self._node = Node(
            self._plane, tuple(self._archives.values()), images.PAUSE_IMAGE, directory=self.directory / "node"
        )
        self._timed("node", self._node.start)
        kubectl = self.kubectl
        self._timed("upstream CRDs", lambda: kubectl.install_crds(upstream.crds()))
        self._timed("Steward's CRDs", lambda: kubectl.install_crds(REPOSITORY / "crds"))
        for name in self.components:
            self._timed(name, functools.partial(addons.install, kubectl, self._manifests(name)))
        return time.monotonic() - started

    def stop(self, keep: bool = False) -> None:
        """Stop the node (draining its pods), the control plane and the host network, in that order; each is
        stopped even when an earlier one fails. Then remove the directory, or with `keep` only what is not a log
        (the image archives and the node's image store: gigabytes)."""
        try:
            if self._node is not None:
                self._node.stop(keep=keep)
        finally:
            try:
                if self._plane is not None:
                    self._plane.stop(keep=keep)
            finally:
                if self._network is not None:
                    self._network.stop()
                shutil.rmtree(self.directory if not keep else self.directory / "images", ignore_errors=True)

    def share_bundles(self, namespace: str, bundles: dict[str, Path], claim: str = "bundles") -> str:
        """Put `bundles` (by version) on the node, readable through the PersistentVolumeClaim `claim` in
        `namespace` (a hostPath volume, as a cluster's shared file system would be); returns `pvc://<claim>`, under
        which each version's bundle is `pvc://<claim>/<version>`. KServe mounts such a claim as it is."""
        directory = self.directory / "bundles" / namespace
        for version, bundle in bundles.items():
            shutil.copytree(bundle, directory / version)
        for path in [directory, *directory.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # read by the predictor's unprivileged user
        spec: dict[str, Any] = {"accessModes": ["ReadOnlyMany"], "storageClassName": "steward-bundles"}
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-{claim}"},
            "spec": {
                **spec,
                "capacity": {"storage": "1Gi"},
                "hostPath": {"path": str(directory), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
        request = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {**spec, "resources": {"requests": {"storage": "1Gi"}}},
        }
        self.kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump_all([volume, request]))
        return f"pvc://{claim}"

    def _manifests(self, name: str) -> list[addons.Manifest]:
        if name == "coredns":
            return addons.coredns(SERVICE_CIDR)
        if name == "kserve":
            return addons.kserve(self.plane.pki, self.directory / "kserve")
        if name == "traefik":
            return addons.traefik()
        raise ValueError(f"no add-on named {name!r} (expected one of {', '.join(ADDONS)})")

    def _timed(self, what: str, step: Callable[[], T]) -> T:
        started = time.monotonic()
        binaries.say(f"starting {what}")
        result = step()
        self.timings[what] = time.monotonic() - started
        binaries.say(f"{what}: {self.timings[what]:.1f} s")
        return result
