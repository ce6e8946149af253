"""Builds the helm client from the Go module proxy into a cache outside the repository."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from steward_harness import binaries
from steward_harness.binaries import BuildError

# The helm release the chart tests run; only Helm 3 is supported (its module path ends in /v3).
HELM_VERSION = os.environ.get("STEWARD_HELM_VERSION", "v3.19.0")

_MODULE = "helm.sh/helm/v3"
_COMMAND = f"{_MODULE}/cmd/helm"
_RELEASE = re.compile(r"v3\.\d+\.\d+")
_PUBLISHED_KUBERNETES = re.compile(r"v0\.(\d+)\.\d+")


def helm_path(version: str = HELM_VERSION) -> Path:
    return binaries.CACHE_DIR / "bin" / f"helm-{version}" / "helm"


def check_version(version: str) -> str:
    """Return `version` if it names a Helm 3 release (v3.19.0), else raise BuildError."""
    if not _RELEASE.fullmatch(version):
        raise BuildError(f"not a Helm 3 release version: {version!r} (expected v3.MINOR.PATCH)")
    return version


def kubernetes_minor(helm_go_mod: str) -> str:
    """The Kubernetes minor version that helm's client-go speaks (client-go v0.34.0 -> "34")."""
    published = binaries.required_version(helm_go_mod, "k8s.io/client-go")
    match = _PUBLISHED_KUBERNETES.fullmatch(published)
    if not match:
        raise BuildError(f"helm requires k8s.io/client-go {published}, which is not a published v0.MINOR.PATCH")
    return match[1]


def wrapper_go_mod(version: str) -> str:
    """A go.mod for a throwaway module whose only dependency is helm at `version`."""
    return f"module steward.invalid/helm\n\ngo 1.24.0\n\nrequire {_MODULE} {check_version(version)}\n"


def ldflags(version: str, helm_go_mod: str) -> str:
    """The linker flags helm's own Makefile sets for a tagged release."""
    minor = kubernetes_minor(helm_go_mod)
    flags = [
        "-s -w",
        f"-X {_MODULE}/internal/version.version={check_version(version)}",
        f"-X {_MODULE}/internal/version.gitTreeState=clean",
    ]
    # Without these, `helm template` and `helm lint` assume Kubernetes v1.20 and refuse any chart whose
    # kubeVersion asks for a newer cluster; a release build pins them to the Kubernetes its client-go targets.
    for package in ("pkg/lint/rules", "pkg/chartutil"):
        flags += [f"-X {_MODULE}/{package}.k8sVersionMajor=1", f"-X {_MODULE}/{package}.k8sVersionMinor={minor}"]
    return " ".join(flags)


def ensure_helm(version: str = HELM_VERSION) -> Path:
    """Return the helm binary for `version`, building it first if the cache lacks it."""
    path = helm_path(check_version(version))
    if not path.exists():
        build(version)
    return path


def build(version: str = HELM_VERSION) -> None:
    """Build helm `version` in a throwaway module and move it into the cache in one rename."""
    check_version(version)
    started = time.monotonic()
    binaries.say(f"building helm {version} from the Go module proxy (once; cached in {binaries.CACHE_DIR})")
    info = json.loads(binaries.go("mod", "download", "-json", f"{_MODULE}@{version}", cwd=Path.cwd()))
    if "Error" in info:
        raise BuildError(f"cannot fetch {_MODULE}@{version}: {info['Error']}")
    flags = ldflags(version, Path(info["GoMod"]).read_text())

    target = helm_path(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    (binaries.CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    # The work directory shares the cache's file system, so the final rename is atomic and concurrent
    # builds never see each other's half-written binaries.
    with tempfile.TemporaryDirectory(dir=binaries.CACHE_DIR / "build") as work:
        module = Path(work)
        (module / "go.mod").write_text(wrapper_go_mod(version))
        binaries.say("resolving modules")
        binaries.go("get", f"{_COMMAND}@{version}", cwd=module)
        binaries.say("compiling helm (a few minutes on a cold Go build cache)")
        built = module / "helm"
        binaries.go("build", "-trimpath", "-ldflags", flags, "-o", str(built), _COMMAND, cwd=module)
        shown = subprocess.run(
            [str(built), "version", "--template", "{{.Version}}"], capture_output=True, text=True, check=False
        )
        reported = shown.stdout.strip()
        if reported != version:
            raise BuildError(f"the helm just built reports version {reported!r}, not {version!r}")
        built.replace(target)
    binaries.say(f"built in {time.monotonic() - started:.0f} s: {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steward_harness.helm",
        description=f"Build helm {HELM_VERSION} from the Go module proxy (needs Go) unless cached; print its path.",
        epilog=f"Cached in {binaries.CACHE_DIR}; set STEWARD_CACHE_DIR to move the cache and "
        "STEWARD_HELM_VERSION to build another Helm 3 release.",
    )
    parser.parse_args(argv)
    try:
        print(ensure_helm())
    except BuildError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
