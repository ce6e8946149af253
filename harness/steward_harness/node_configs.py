"""What a node's parts start from, rendered from plain values: containerd's configuration, the CNI network list its
pods join, and the kubelet's KubeletConfiguration."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

# Where the bridge, host-local and portmap plugins are: Debian's containernetworking-plugins installs them here.
CNI_PLUGINS = Path(os.environ.get("STEWARD_CNI_PLUGINS", "/usr/lib/cni"))


def containerd_config(root: Path, state: Path, socket: Path, cni_config: Path, sandbox_image: str) -> str:
    """containerd's configuration for a node: its own root, state and socket, the CRI plugin with the local
    sandbox image and the node's CNI configuration."""
    return f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # Root here lacks CAP_SYS_RESOURCE: lowering a process's OOM score would fail every sandbox.
  restrict_oom_score_adj = true
  # Pod network namespaces stay below the node's directory rather than in /var/run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_PLUGINS}"
    conf_dir = "{cni_config}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/opt"
"""


def cni_config(bridge: str, subnet: str, data_dir: Path) -> dict[str, object]:
    """The CNI network list a node's pods join: `bridge`, with their addresses from `subnet` (its first address the
    gateway) recorded in `data_dir`, and port mappings."""
    gateway = str(ipaddress.ip_network(subnet).network_address + 1)
    return {
        "cniVersion": "0.4.0",
        "name": "steward",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(  # noqa: PLR0917 -- one value per file, port and address the kubelet needs
    runtime: Path,
    pod_logs: Path,
    ca: Path,
    serving: tuple[Path, Path],
    resolv: Path,
    port: int,
    healthz: int,
    address: str,
    cluster_dns: str,
) -> dict[str, object]:
    """The KubeletConfiguration of a node on this kind of host (cgroup v1, root without CAP_SYS_RESOURCE, a disk
    shared with everything else), listening on `address`, its pods resolving names through `cluster_dns`."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz,
        "containerRuntimeEndpoint": f"unix://{runtime}",
        "cgroupDriver": "cgroupfs",
        # Kubernetes 1.35 refuses cgroup v1 unless told; this host has nothing else.
        "failCgroupV1": False,
        "failSwapOn": False,
        "podLogsDir": str(pod_logs),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving[0]),
        "tlsPrivateKeyFile": str(serving[1]),
        "clusterDNS": [cluster_dns],
        "clusterDomain": "cluster.local",
        "resolvConf": str(resolv),
        # The disk is shared with the whole machine: never evict or collect images because of it.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "maxPods": 60,
        "registerNode": True,
    }
