"""The third-party pieces Steward is tested against, pinned, fetched from the Go module proxy and never committed:
the upstream CRDs of KServe, Gateway API, Istio and Traefik, and the KServe controller and Traefik binaries.

Each is read from its project's own Go module, so the schemas the API server validates with and the controllers that
act on them are exactly what a user installs from that release.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from steward_harness import binaries
from steward_harness.binaries import BuildError


@dataclass(frozen=True)
class Module:
    """A Go module at a pinned version."""

    path: str
    version: str

    def directory(self) -> Path:
        """The module's read-only source in Go's module cache, downloaded first if needed."""
        info = json.loads(binaries.go("mod", "download", "-json", f"{self.path}@{self.version}", cwd=Path.cwd()))
        if "Error" in info:
            raise BuildError(f"cannot fetch {self.path}@{self.version}: {info['Error']}")
        return Path(info["Dir"])


# Pinned to what the Go module proxy serves here; see the README's table of third-party versions.
KSERVE = Module("github.com/kserve/kserve", os.environ.get("STEWARD_KSERVE_VERSION", "v0.17.0"))
GATEWAY_API = Module("sigs.k8s.io/gateway-api", os.environ.get("STEWARD_GATEWAY_API_VERSION", "v1.4.1"))
ISTIO_API = Module("istio.io/api", os.environ.get("STEWARD_ISTIO_API_VERSION", "v1.28.0"))
TRAEFIK = Module("github.com/traefik/traefik/v3", os.environ.get("STEWARD_TRAEFIK_VERSION", "v3.6.12"))
COREDNS = Module("github.com/coredns/coredns", os.environ.get("STEWARD_COREDNS_VERSION", "v1.14.7"))
PROMETHEUS_RELEASE = os.environ.get("STEWARD_PROMETHEUS_VERSION", "3.16.0")


def prometheus_module(release: str) -> Module:
    """Prometheus' module for a release: 3.16.0 is v0.316.0, 3.5.1 is v0.305.1."""
    major, minor, patch = (int(part) for part in release.split("."))
    return Module("github.com/prometheus/prometheus", f"v0.{major}{minor:02d}.{patch}")


PROMETHEUS = prometheus_module(PROMETHEUS_RELEASE)


@dataclass(frozen=True)
class CrdSource:
    """Where one group of upstream CRDs lives inside its module, and which of the file's kinds to keep."""

    module: Module
    files: tuple[str, ...]
    kinds: frozenset[str] = frozenset()
    """Only these kinds (spec.names.kind) from `files`; empty keeps every CRD in them."""


CRD_SOURCES = {
    # KServe's full CRDs carry the complete OpenAPI schema (the "minimal" ones preserve unknown fields).
    "kserve": CrdSource(
        KSERVE,
        (
            "config/crd/full/serving.kserve.io_inferenceservices.yaml",
            "config/crd/full/serving.kserve.io_servingruntimes.yaml",
            "config/crd/full/serving.kserve.io_clusterservingruntimes.yaml",
            "config/crd/full/serving.kserve.io_trainedmodels.yaml",
            "config/crd/full/serving.kserve.io_inferencegraphs.yaml",
            # Without it KServe 0.17.0's controller panics on every InferenceService with a storage URI.
            "config/crd/full/clusterstoragecontainer/serving.kserve.io_clusterstoragecontainers.yaml",
        ),
    ),
    # The experimental channel: the standard one plus what Steward's shadow stage writes (RequestMirror percent).
    "gateway-api": CrdSource(
        GATEWAY_API,
        tuple(
            f"config/crd/experimental/gateway.networking.k8s.io_{kind}.yaml"
            for kind in (
                "gatewayclasses",
                "gateways",
                "httproutes",
                "grpcroutes",
                "referencegrants",
                "backendtlspolicies",
                "tcproutes",
                "tlsroutes",
                "udproutes",
            )
        ),
    ),
    "istio": CrdSource(
        ISTIO_API, ("kubernetes/customresourcedefinitions.gen.yaml",), frozenset({"VirtualService", "DestinationRule"})
    ),
    "traefik": CrdSource(TRAEFIK, ("docs/content/reference/dynamic-configuration/kubernetes-crd-definition-v1.yml",)),
}


def crds(names: tuple[str, ...] = tuple(CRD_SOURCES)) -> Path:
    """A directory in the cache holding the CRDs of `names`, one file per CRD, written once per pinned version."""
    sources = [CRD_SOURCES[name] for name in names]
    key = "-".join(f"{name}@{source.module.version}" for name, source in zip(names, sources, strict=True))
    # The choice of files and kinds is part of the key: a changed selection is never served from an old set.
    selection = hashlib.sha256(repr(sources).encode()).hexdigest()[:8]
    target = binaries.CACHE_DIR / "crds" / f"{key}-{selection}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        for source in sources:
            root = source.module.directory()
            for relative in source.files:
                for crd in _documents(root / relative):
                    kind = crd["spec"]["names"]["kind"]
                    if source.kinds and kind not in source.kinds:
                        continue
                    (Path(work) / f"{crd['metadata']['name']}.yaml").write_text(yaml.safe_dump(crd, sort_keys=False))
        # One rename publishes the whole set: a reader never sees half of it.
        Path(work).rename(target)
    return target


def _documents(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        raise BuildError(f"the pinned module has no {path.name} (looked for {path})")
    for document in yaml.safe_load_all(path.read_text()):
        if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
            yield document


@dataclass(frozen=True)
class Tool:
    """A command built from a third-party module inside a writable copy of it, so the module's own `replace`
    directives apply exactly as in its release build."""

    name: str
    module: Module
    package: str
    ldflags: str = "-s -w"
    tags: str = ""
    """Go build tags, comma-separated."""
    command: str = ""
    """Where the project's own image puts the binary, which its release manifests run (default: /<name>)."""

    def path(self) -> Path:
        return binaries.CACHE_DIR / "bin" / f"{self.name}-{self.module.version}" / self.name


TOOLS = {
    "kserve-manager": Tool("kserve-manager", KSERVE, "./cmd/manager", command="/manager"),
    # The node's cluster DNS, serving Services' names from the API as in any cluster.
    "coredns": Tool("coredns", COREDNS, "."),
    "traefik": Tool(
        "traefik",
        TRAEFIK,
        "./cmd/traefik",
        f"-s -w -X github.com/traefik/traefik/v3/pkg/version.Version={TRAEFIK.version}",
    ),
    # A Prometheus with Kubernetes service discovery, which Debian's package leaves out; file and HTTP discovery
    # come with every build, the other clouds' are left out.
    "prometheus": Tool(
        "prometheus",
        PROMETHEUS,
        "./cmd/prometheus",
        f"-s -w -X github.com/prometheus/common/version.Version={PROMETHEUS_RELEASE}",
        tags="remove_all_sd,enable_kubernetes_sd",
    ),
}


def ensure_tool(name: str) -> Path:
    """The path of tool `name`, building it first if the cache lacks it."""
    tool = TOOLS[name]
    if not tool.path().exists():
        build_tool(tool)
    return tool.path()


def build_tool(tool: Tool) -> None:
    started = time.monotonic()
    binaries.say(
        f"building {tool.name} from {tool.module.path}@{tool.module.version} "
        f"(once, about ten minutes cold; cached in {binaries.CACHE_DIR})"
    )
    source = tool.module.directory()
    target = tool.path()
    target.parent.mkdir(parents=True, exist_ok=True)
    (binaries.CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binaries.CACHE_DIR / "build") as work:
        module = Path(work) / "module"
        shutil.copytree(source, module)
        # Go's module cache is read-only; the copy must take go.sum updates.
        for entry in [module, *module.rglob("*")]:
            entry.chmod(entry.stat().st_mode | stat.S_IWUSR)
        partial = Path(work) / tool.name
        binaries.go(
            "build",
            "-trimpath",
            f"-tags={tool.tags}",
            "-ldflags",
            tool.ldflags,
            "-o",
            str(partial),
            tool.package,
            cwd=module,
        )
        partial.replace(target)
    binaries.say(f"built {tool.name} in {time.monotonic() - started:.0f} s: {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steward_harness.upstream",
        description="Fetch the pinned upstream CRDs and build the pinned third-party tools (needs Go); print paths.",
        epilog=f"Cached in {binaries.CACHE_DIR}; set STEWARD_CACHE_DIR to move the cache.",
    )
    parser.add_argument("tools", nargs="*", metavar="TOOL", help=f"also build these: {', '.join(TOOLS)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.tools) - set(TOOLS))
    if unknown:
        parser.error(f"unknown tool {', '.join(unknown)} (expected {', '.join(TOOLS)})")
    try:
        print(f"{'crds:':24} {crds()}")
        for name in args.tools:
            print(f"{name + ':':24} {ensure_tool(name)}")
    except BuildError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
