"""steward-local: build the control-plane binaries, run a local control plane for manual use, or play the demo."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from steward_harness import binaries, demo
from steward_harness.clusters import LocalCluster
from steward_harness.controlplane import ControlPlane, ControlPlaneError
from steward_harness.kubectl import Kubectl, KubectlError
from steward_harness.node import NodeError

REPOSITORY = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="steward-local",
        description="A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on loopback, "
        "for tests and manual use.",
        epilog="Binaries are built once from the Go module proxy (needs Go) and cached in "
        f"{binaries.CACHE_DIR}; set STEWARD_CACHE_DIR to move the cache.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build", help=f"build {', '.join(binaries.BINARIES)} {binaries.KUBERNETES_VERSION} if not cached"
    )
    build.add_argument("--node", action="store_true", help=f"build {', '.join(binaries.NODE_BINARIES)} instead")
    cluster = commands.add_parser(
        "cluster", help="start the control plane, install Steward's CRDs, print a KUBECONFIG line; Ctrl-C stops it"
    )
    cluster.add_argument("--dir", type=Path, help="keep state and logs here (default: a new temporary directory)")
    cluster.add_argument("--no-crds", action="store_true", help="do not install the CRDs from crds/")
    cluster.add_argument(
        "--node",
        action="store_true",
        help="also run a real node (containerd, kubelet, kube-proxy, scheduler) with Steward's images, CoreDNS, "
        "KServe's controller and Traefik; needs root, and removes everything it added to the host when stopped",
    )
    story = commands.add_parser(
        "demo",
        help="play a release story end to end: v2 promoted on evidence, a bad v3 rolled back automatically",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(story)
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            names = binaries.NODE_BINARIES if args.node else binaries.BINARIES
            for name, path in binaries.ensure_binaries(names=names).items():
                print(f"{name + ':':24} {path}")
            return 0
        if args.command == "demo":
            return demo.run(args)
        return _cluster(args.dir, install_crds=not args.no_crds, node=args.node)
    except (binaries.BuildError, ControlPlaneError, KubectlError, NodeError) as error:
        print(f"steward-local: {error}", file=sys.stderr)
        return 1


def _cluster(directory: Path | None, install_crds: bool, node: bool) -> int:
    # Given a directory, none is made: a made one would be left behind empty.
    kind = LocalCluster if node else ControlPlane
    server: ControlPlane | LocalCluster = kind(directory=directory.resolve()) if directory else kind()
    # SIGTERM stops the servers as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with server:
        plane = server.plane if isinstance(server, LocalCluster) else server
        print(f"control plane ready at {plane.server} (logs in {server.directory})", file=sys.stderr)
        if install_crds:
            Kubectl(plane.kubeconfig).install_crds(REPOSITORY / "crds")
            print("installed the CRDs from crds/", file=sys.stderr)
        print(f"export KUBECONFIG={plane.kubeconfig}", flush=True)
        print("press Ctrl-C to stop", file=sys.stderr)
        try:
            signal.pause()
        except KeyboardInterrupt:
            print("\nstopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
