"""Steward's base image: a minimal Debian bookworm with Python, debootstrapped from the host's Debian mirror, trimmed
and imported into the engine, rebuilt only when its recipe changes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from steward_harness import binaries
from steward_harness.binaries import BuildError
from steward_harness.engine import INPUTS_LABEL, Engine, inputs_digest, installed

BASE_IMAGE = "steward-base:bookworm"
SUITE = "bookworm"
# bookworm's python3 is 3.11, the Python the wheels are built for; python3-venv brings the pip a venv starts with;
# libgomp1 is the OpenMP runtime of scikit-learn and numpy.
BASE_PACKAGES = ("python3", "python3-venv", "libgomp1")
# Emptied after debootstrap: apt's downloads and indexes, and documentation (copyright notices stay).
BASE_TRIMMED = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)
DEBIAN_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = Path("/etc/apt")


def debian_mirror(sources: Iterable[str], suite: str = SUITE) -> str:
    """The first Debian mirror the host's apt sources use for `suite` itself (not -updates or -security); Debian's
    own when none does. A source signed by a keyring other than Debian's is a third party's, whatever its suite."""
    for text in sources:
        for uri, suites, components, signed_by in _apt_entries(text):
            if suite in suites and "main" in components and (not signed_by or "debian-archive-keyring" in signed_by):
                return uri.rstrip("/")
    return DEBIAN_MIRROR


def host_apt_sources(directory: Path = APT_SOURCES) -> list[str]:
    """The text of sources.list and of each sources.list.d file (*.list, and deb822 *.sources), in apt's order."""
    files = [directory / "sources.list"]
    files += sorted(path for path in (directory / "sources.list.d").glob("*") if path.suffix in {".list", ".sources"})
    return [path.read_text(errors="replace") for path in files if path.is_file()]


def _apt_entries(text: str) -> Iterator[tuple[str, list[str], list[str], str]]:
    """(URI, suites, components, signed-by) of each binary-package source in a one-line or a deb822 sources file."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    for line in lines:
        one_line = re.match(r"\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", line)
        if one_line:
            options = dict(re.findall(r"([\w-]+)=(\S+)", one_line[1] or ""))
            yield one_line[2], [one_line[3]], one_line[4].split(), options.get("signed-by", "")
    for paragraph in re.split(r"\n\s*\n", "\n".join(lines)):
        fields = {key.lower(): value.strip() for key, value in re.findall(r"^([\w-]+):(.*)$", paragraph, re.MULTILINE)}
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            for uri in fields.get("uris", "").split():
                yield (
                    uri,
                    fields.get("suites", "").split(),
                    fields.get("components", "").split(),
                    fields.get("signed-by", ""),
                )


def base_digest() -> str:
    """What the base is built from: a new suite, package or trimming rule rebuilds it."""
    recipe = {"suite": SUITE, "variant": "minbase", "packages": BASE_PACKAGES, "trimmed": BASE_TRIMMED}
    return inputs_digest([("recipe", json.dumps(recipe).encode())])


def ensure_base(engine: Engine) -> str:
    """The image id of steward-base:bookworm, debootstrapped and imported first unless the engine has it already,
    built from the same recipe."""
    digest = base_digest()
    if engine.inputs(BASE_IMAGE) != digest:
        build_base(engine, digest)
    else:
        binaries.say(f"{BASE_IMAGE}: up to date")
    image = engine.inspect(BASE_IMAGE)
    assert image is not None, "docker import succeeded without leaving the image"  # noqa: S101 -- a broken engine
    return str(image["Id"])


def build_base(engine: Engine, digest: str) -> None:
    """debootstrap a minimal bookworm with BASE_PACKAGES from the host's Debian mirror and `docker import` it."""
    if os.geteuid() != 0:
        raise BuildError("debootstrap needs root to build the base image; run as root")
    debootstrap = installed("debootstrap", "debootstrap (Debian: apt-get install debootstrap)")
    mirror = debian_mirror(host_apt_sources())
    binaries.say(f"debootstrapping {SUITE} with {', '.join(BASE_PACKAGES)} from {mirror} (once; a minute or two)")
    started = time.monotonic()
    (binaries.CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=binaries.CACHE_DIR / "build"))
    root = work / "rootfs"
    try:
        with (work / "debootstrap.log").open("w") as log:
            command = [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(root),
                mirror,
            ]
            exit_code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        if exit_code != 0:
            tail = "\n".join((work / "debootstrap.log").read_text(errors="replace").splitlines()[-20:])
            raise BuildError(f"debootstrap failed (exit {exit_code}):\n{tail}")
        _trim(root)
        changes = [
            f"LABEL {INPUTS_LABEL}={digest}",
            # An imported image has no environment; these are what Debian's own images set.
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["/bin/bash"]',
        ]
        # The device nodes debootstrap made stay out: the engine gives every container its own /dev.
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "--exclude=./dev/*", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
        )
        assert tar.stdout is not None  # noqa: S101 -- stdout=PIPE
        try:
            engine.docker("import", *(f"--change={change}" for change in changes), "-", BASE_IMAGE, stdin=tar.stdout)
        finally:
            tar.stdout.close()
            tar.wait()
    finally:
        _remove_rootfs(work, root)
    size = (engine.inspect(BASE_IMAGE) or {}).get("Size", 0)
    binaries.say(f"{BASE_IMAGE}: built in {time.monotonic() - started:.0f} s ({size / 1e6:.0f} MB)")


def _trim(root: Path) -> None:
    for trimmed in BASE_TRIMMED:
        for path in sorted((root / trimmed).rglob("*")):
            if (path.is_symlink() or path.is_file()) and path.name != "copyright":
                path.unlink()


def _remove_rootfs(work: Path, root: Path) -> None:
    """Remove a debootstrap work directory, after unmounting what a failed run may have left mounted in it (its
    /proc, /sys): a recursive delete must never reach the host's through them."""
    for mountpoint in sorted(_mounts_below(root), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mountpoint], capture_output=True, check=False)
    left = _mounts_below(root)
    if left:
        raise BuildError(f"could not unmount {', '.join(left)}; {work} is left for you to clean up")
    shutil.rmtree(work, ignore_errors=True)


def _mounts_below(root: Path) -> list[str]:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    # Spaces and the like are octal escapes in /proc/self/mounts.
    points = [re.sub(r"\\([0-7]{3})", lambda code: chr(int(code[1], 8)), line.split()[1]) for line in mounts]
    return [point for point in points if point.startswith(f"{root}/")]
