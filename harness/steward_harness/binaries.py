"""Builds kube-apiserver and etcd from the Go module proxy into a cache outside the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The Kubernetes release the local control plane runs; its staging modules are published as v0.<minor>.<patch>.
KUBERNETES_VERSION = os.environ.get("STEWARD_KUBERNETES_VERSION", "v1.34.4")
# Where built binaries live, keyed by version; never inside the repository.
CACHE_DIR = Path(os.environ.get("STEWARD_CACHE_DIR", Path.home() / ".cache" / "steward"))

_STAGING_REPLACE = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", re.MULTILINE)
_REQUIRE = re.compile(r"^\s*(\S+)\s+(v\S+)", re.MULTILINE)


class BuildError(RuntimeError):
    """A binary could not be built; the message carries the failing command's output."""


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


def kube_apiserver_path(version: str = KUBERNETES_VERSION) -> Path:
    return CACHE_DIR / "bin" / version / "kube-apiserver"


def etcd_path(version: str = KUBERNETES_VERSION) -> Path:
    # etcd is built at the version the Kubernetes release itself requires, so it is keyed by that release.
    return CACHE_DIR / "bin" / version / "etcd"


def ensure_binaries(version: str = KUBERNETES_VERSION) -> tuple[Path, Path]:
    """Return (kube-apiserver, etcd), building both first if the cache lacks them."""
    apiserver, etcd = kube_apiserver_path(version), etcd_path(version)
    if not (apiserver.exists() and etcd.exists()):
        build(version)
    return apiserver, etcd


def build(version: str = KUBERNETES_VERSION) -> None:
    """Build kube-apiserver and etcd for `version` in a throwaway module and move them into the cache."""
    started = time.monotonic()
    _say(f"building kube-apiserver and etcd {version} from the Go module proxy (once; cached in {CACHE_DIR})")
    info = json.loads(_go("mod", "download", "-json", f"k8s.io/kubernetes@{version}", cwd=Path.cwd()))
    if "Error" in info:
        raise BuildError(f"cannot fetch k8s.io/kubernetes@{version}: {info['Error']}")
    kubernetes_go_mod = Path(info["GoMod"]).read_text()
    etcd_version = required_version(kubernetes_go_mod, "go.etcd.io/etcd/server/v3")

    out_dir = kube_apiserver_path(version).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR / "build") as work:
        module = Path(work)
        (module / "go.mod").write_text(wrapper_go_mod(version, kubernetes_go_mod))
        _say("resolving modules")
        _go(
            "get",
            f"k8s.io/kubernetes/cmd/kube-apiserver@{version}",
            f"go.etcd.io/etcd/server/v3@{etcd_version}",
            cwd=module,
        )
        minor = version.split(".")[1]
        version_pkg = "k8s.io/component-base/version"
        ldflags = " ".join(
            [
                "-s -w",
                f"-X {version_pkg}.gitVersion={version}",
                f"-X {version_pkg}.gitMajor=1",
                f"-X {version_pkg}.gitMinor={minor}",
                f"-X {version_pkg}.gitTreeState=clean",
                f"-X {version_pkg}.buildDate={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
            ]
        )
        for name, package, flags in [
            ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", ldflags),
            ("etcd", "go.etcd.io/etcd/server/v3", "-s -w"),
        ]:
            _say(f"compiling {name} (several minutes on a cold Go build cache)")
            partial = out_dir / f".{name}.partial"
            _go("build", "-trimpath", "-ldflags", flags, "-o", str(partial), package, cwd=module)
            partial.rename(out_dir / name)
    _say(f"built in {time.monotonic() - started:.0f} s: {out_dir}")


def _go(*args: str, cwd: Path) -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError("the Go toolchain (go) is not on PATH; it is needed once to build kube-apiserver and etcd")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false"}
    result = subprocess.run([go, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"go {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr.strip()}")
    return result.stdout


def _say(message: str) -> None:
    print(f"[steward] {message}", file=sys.stderr, flush=True)
