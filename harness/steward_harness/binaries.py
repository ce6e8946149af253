"""Builds the local control plane's binaries from the Go module proxy into a cache outside the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The Kubernetes release the local control plane runs; its staging modules are published as v0.<minor>.<patch>.
KUBERNETES_VERSION = os.environ.get("STEWARD_KUBERNETES_VERSION", "v1.34.4")
# Where built binaries live, keyed by version; never inside the repository.
CACHE_DIR = Path(os.environ.get("STEWARD_CACHE_DIR", Path.home() / ".cache" / "steward"))

ETCD = "etcd"
# What the local control plane runs; every name but etcd is a command of k8s.io/kubernetes (cmd/<name>).
BINARIES = ("kube-apiserver", "kube-controller-manager", ETCD)
# What a local node adds to it: pods scheduled, run and reached through Services.
NODE_BINARIES = ("kube-scheduler", "kubelet", "kube-proxy")

_STAGING_REPLACE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", re.MULTILINE)
_REQUIRE = re.compile(r"^\s*(\S+)\s+(v\S+)", re.MULTILINE)


class BuildError(RuntimeError):
    """A binary could not be built; the message carries the failing command's output."""


@dataclass(frozen=True)
class Compilation:
    """One `go build`: the binary it writes, the package and the module version it is built from, its ldflags."""

    name: str
    package: str
    version: str
    ldflags: str


def staging_version(kubernetes_version: str) -> str:
    """Map a Kubernetes release (v1.34.4) to its published staging module version (v0.34.4)."""
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", kubernetes_version)
    if not match:
        raise BuildError(f"not a Kubernetes release version: {kubernetes_version!r} (expected v1.MINOR.PATCH)")
    return f"v0.{match[1]}.{match[2]}"


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """The k8s.io modules that k8s.io/kubernetes replaces with its own staging directories."""
    return sorted(set(_STAGING_REPLACE.findall(kubernetes_go_mod)))


def required_version(go_mod: str, module: str) -> str:
    """The version of `module` that a go.mod requires."""
    for name, version in _REQUIRE.findall(go_mod):
        if name == module:
            return str(version)
    raise BuildError(f"{module} is not required by this go.mod")


def wrapper_go_mod(kubernetes_version: str, kubernetes_go_mod: str) -> str:
    """A go.mod that depends on k8s.io/kubernetes with every staging module pinned to its published version."""
    published = staging_version(kubernetes_version)
    replaces = "".join(f"\t{module} => {module} {published}\n" for module in staging_modules(kubernetes_go_mod))
    return (
        "module steward.invalid/controlplane\n\n"
        "go 1.24.0\n\n"
        f"require k8s.io/kubernetes {kubernetes_version}\n\n"
        f"replace (\n{replaces})\n"
    )


def binary_path(name: str, version: str = KUBERNETES_VERSION) -> Path:
    # etcd is built at the version the Kubernetes release itself requires, so it too is keyed by that release.
    return CACHE_DIR / "bin" / version / name


def missing_binaries(version: str = KUBERNETES_VERSION, names: Sequence[str] = BINARIES) -> list[str]:
    """Which of `names` the cache does not hold yet for `version`."""
    return [name for name in names if not binary_path(name, version).exists()]


def ensure_binaries(version: str = KUBERNETES_VERSION, names: Sequence[str] = BINARIES) -> dict[str, Path]:
    """The path of each of `names` by name, building first whichever the cache lacks."""
    missing = missing_binaries(version, names)
    if missing:
        build(version, missing)
    return {name: binary_path(name, version) for name in names}


def kubernetes_ldflags(version: str, build_date: str) -> str:
    """The linker flags that make a Kubernetes binary report `version` as a clean release build."""
    version_pkg = "k8s.io/component-base/version"
    return " ".join(
        [
            "-s -w",
            f"-X {version_pkg}.gitVersion={version}",
            f"-X {version_pkg}.gitMajor=1",
            f"-X {version_pkg}.gitMinor={version.split('.')[1]}",
            f"-X {version_pkg}.gitTreeState=clean",
            f"-X {version_pkg}.buildDate={build_date}",
        ]
    )


def compilations(names: Sequence[str], version: str, etcd_version: str, build_date: str) -> list[Compilation]:
    """The builds that produce `names`: Kubernetes commands at `version`, etcd at `etcd_version`."""
    plan = []
    for name in names:
        if name == ETCD:
            plan.append(Compilation(ETCD, "go.etcd.io/etcd/server/v3", etcd_version, "-s -w"))
        elif name in BINARIES + NODE_BINARIES:
            plan.append(
                Compilation(name, f"k8s.io/kubernetes/cmd/{name}", version, kubernetes_ldflags(version, build_date))
            )
        else:
            known = ", ".join(BINARIES + NODE_BINARIES)
            raise BuildError(f"not a Kubernetes binary: {name!r} (expected one of {known})")
    return plan


def build(version: str = KUBERNETES_VERSION, names: Sequence[str] = BINARIES) -> None:
    """Build `names` for `version` in a throwaway module and move each into the cache in one rename."""
    started = time.monotonic()
    say(f"building {', '.join(names)} {version} from the Go module proxy (once; cached in {CACHE_DIR})")
    info = json.loads(go("mod", "download", "-json", f"k8s.io/kubernetes@{version}", cwd=Path.cwd()))
    if "Error" in info:
        raise BuildError(f"cannot fetch k8s.io/kubernetes@{version}: {info['Error']}")
    kubernetes_go_mod = Path(info["GoMod"]).read_text()
    etcd_version = required_version(kubernetes_go_mod, "go.etcd.io/etcd/server/v3")
    build_date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    plan = compilations(names, version, etcd_version, build_date)

    out_dir = binary_path(ETCD, version).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR / "build") as work:
        module = Path(work)
        (module / "go.mod").write_text(wrapper_go_mod(version, kubernetes_go_mod))
        say("resolving modules")
        go("get", *(f"{step.package}@{step.version}" for step in plan), cwd=module)
        for step in plan:
            say(f"compiling {step.name} (several minutes on a cold Go build cache)")
            # Built in the work directory, on the cache's file system, and renamed into place once complete: a
            # half-built binary is never found and run, and concurrent builds never write the same file.
            partial = module / step.name
            go("build", "-trimpath", "-ldflags", step.ldflags, "-o", str(partial), step.package, cwd=module)
            partial.replace(out_dir / step.name)
    say(f"built in {time.monotonic() - started:.0f} s: {out_dir}")


def go(*args: str, cwd: Path) -> str:
    """Run the Go toolchain in `cwd` (static builds, modules resolved as needed); its stdout, or BuildError."""
    toolchain = shutil.which("go")
    if toolchain is None:
        raise BuildError("the Go toolchain (go) is not on PATH; it is needed once to build what the tests run")
    # A module's go.work (Prometheus ships one) would put the build in workspace mode, which refuses -mod=mod.
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false", "GOWORK": "off"}
    result = subprocess.run([toolchain, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"go {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr.strip()}")
    return result.stdout


def say(message: str) -> None:
    """Progress on stderr, as every build here reports it."""
    print(f"[steward] {message}", file=sys.stderr, flush=True)
