"""Builds Steward's images offline on a debootstrapped Debian base, checks them, and exports them for containerd."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from steward_harness import binaries, upstream
from steward_harness.base_image import BASE_IMAGE, ensure_base
from steward_harness.binaries import BuildError
from steward_harness.engine import INPUTS_LABEL, Engine, inputs_digest, installed

REPOSITORY = Path(__file__).resolve().parents[2]
PAUSE_SOURCE = Path(__file__).resolve().parent / "pause"

# Every image this module builds is named under this registry, which no one serves: nothing is ever pulled.
REGISTRY = "steward.local"
# A node needs a pod sandbox image; the tag is the upstream pause release whose behaviour this one copies.
PAUSE_IMAGE = f"{REGISTRY}/pause:3.10"
WHEEL_MANIFEST = "SHA256SUMS"
# The Python of bookworm's python3; pip on this machine picks wheels for the Python it runs on.
TARGET_PYTHON = (3, 11)
PROBE_USER = 10001
PAUSE_USER = 65535
# Run as each image's entry point under a read-only root: the uid it runs as, whether a world-writable directory
# of the image (/var/tmp) can be written, then the entry point itself, whose exit status is the container's.
_PROBE = 'id -u; if touch /var/tmp/.probe 2>/dev/null; then echo writable; else echo read-only; fi; exec "$@"'


@dataclass(frozen=True)
class Part:
    """A deployable part: its image is built from <name>/Dockerfile with the wheels of the extra of the same name."""

    name: str
    writable: tuple[str, ...]
    """Where it writes under a read-only root, as its chart mounts it (an emptyDir or a volume; a tmpfs here)."""


# /tmp inside the container, where the charts mount an emptyDir.
_TMP = "/tmp"  # noqa: S108
PARTS = (Part("predictor", (_TMP,)), Part("operator", (_TMP,)), Part("monitor", (_TMP, "/data")))


@dataclass(frozen=True)
class Built:
    """An image ready in the engine: built just now (taking `seconds`) or reused because its inputs are unchanged."""

    name: str
    reference: str
    seconds: float
    reused: bool


@dataclass(frozen=True)
class Probe:
    """What one run of an image showed: the uid its process ran as, whether its root file system could be written,
    the exit status of its entry point, and what it printed."""

    uid: int
    read_only: bool
    exit_code: int
    output: str
    seconds: float


def image_reference(name: str, version: str, digest: str) -> str:
    """steward.local/<name>:<version>-<12 hex digits of its inputs digest>: the version says which release, the
    digest makes a changed image a new tag, so a node that already holds the old one never keeps running it."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{version}-{digest[:12]}")
    return f"{REGISTRY}/{name}:{tag}"


def build_command(context: Path, reference: str, digest: str, base: str | None) -> list[str]:
    """`docker build` arguments for `context` (a Dockerfile and what it copies), offline, labelled with `digest`;
    `base` replaces the Dockerfile's default BASE."""
    command = ["build", "--network=none", "--force-rm", f"--label={INPUTS_LABEL}={digest}", f"--tag={reference}"]
    if base is not None:
        command.append(f"--build-arg=BASE={base}")
    return [*command, str(context)]


def probe_command(reference: str, entrypoint: Sequence[str], writable: Sequence[str]) -> list[str]:
    """`docker run` arguments that run `entrypoint --help` once, as the image's own user, offline, without
    capabilities, on a read-only root with a tmpfs only where the part writes; _PROBE reports what it saw."""
    return [
        "run",
        "--rm",
        "--network=none",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        *(f"--tmpfs={path}" for path in writable),
        "--entrypoint=/bin/sh",
        reference,
        "-c",
        _PROBE,
        "probe",
        *entrypoint,
        "--help",
    ]


def project_version(root: Path = REPOSITORY) -> str:
    return str(tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"])


def wheel_sources(root: Path = REPOSITORY) -> list[Path]:
    """What a wheel of Steward is built from: pyproject.toml, the README it names, and every file of the package
    folders it lists (bytecode, build metadata and the Dockerfiles left out)."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    files = [root / "pyproject.toml", root / pyproject["project"]["readme"]]
    for folder in pyproject["tool"]["setuptools"]["packages"]["find"]["where"]:
        files += sorted(path for path in (root / folder).rglob("*") if path.is_file() and _in_wheel(path))
    return files


def _in_wheel(path: Path) -> bool:
    skipped = any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts)
    return not skipped and path.suffix != ".pyc" and path.name != "Dockerfile"


def wheels_digest(extra: str, root: Path = REPOSITORY) -> str:
    """The digest the wheels of `.[extra]` are cached under: the extra, the target Python and every source file."""
    named = [(str(path.relative_to(root)), path.read_bytes()) for path in wheel_sources(root)]
    return inputs_digest([("extra", extra.encode()), ("python", repr(TARGET_PYTHON).encode()), *named])


def ensure_wheels(extra: str, root: Path = REPOSITORY) -> Path:
    """A cached directory holding every wheel `.[extra]` installs, built by pip on this machine unless the sources
    are unchanged since the last build."""
    if sys.version_info[:2] != TARGET_PYTHON:
        wanted = ".".join(map(str, TARGET_PYTHON))
        raise BuildError(
            f"wheels are built for the Python running this ({sys.version.split()[0]}), and the base's python3 "
            f"is {wanted}: run with Python {wanted}"
        )
    (binaries.CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wheels-", dir=binaries.CACHE_DIR / "build") as work:
        # One copy of the sources is both hashed and built, so a file edited meanwhile cannot slip in under the old
        # digest; and setuptools' build/ and egg-info never land in the repository.
        source = Path(work) / "source"
        for path in wheel_sources(root):
            (source / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / path.relative_to(root))
        cached = binaries.CACHE_DIR / "wheels" / f"{extra}-{wheels_digest(extra, source)[:16]}"
        if (cached / WHEEL_MANIFEST).exists():
            binaries.say(f"wheels for .[{extra}]: up to date ({cached})")
            return cached
        binaries.say(f"building the wheels of .[{extra}] with pip (from PyPI on a cold pip cache)")
        started = time.monotonic()
        wheels = Path(work) / "wheels"
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), f"{source}[{extra}]"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = result.stderr.strip()[-4000:]
            raise BuildError(f"pip wheel .[{extra}] failed (exit {result.returncode}):\n{output}")
        found = sorted(wheels.glob("*.whl"))
        (wheels / WHEEL_MANIFEST).write_text("".join(f"{_sha256(wheel)}  {wheel.name}\n" for wheel in found))
        shutil.rmtree(cached, ignore_errors=True)
        cached.parent.mkdir(parents=True, exist_ok=True)
        wheels.rename(cached)
    for stale in cached.parent.glob(f"{extra}-*"):
        if stale != cached:
            shutil.rmtree(stale, ignore_errors=True)
    seconds = time.monotonic() - started
    binaries.say(f"wheels for .[{extra}]: {len(found)} built in {seconds:.0f} s ({_megabytes(cached)} MB)")
    return cached


def build_part(engine: Engine, part: Part, base_id: str, root: Path = REPOSITORY) -> Built:
    """The image of `part` on steward-base, from its Dockerfile and its wheels alone, offline."""
    wheels = ensure_wheels(part.name, root)
    dockerfile = root / part.name / "Dockerfile"
    digest = inputs_digest(
        [
            ("Dockerfile", dockerfile.read_bytes()),
            ("base", base_id.encode()),
            ("wheels", (wheels / WHEEL_MANIFEST).read_bytes()),
        ]
    )

    def fill(context: Path) -> None:
        shutil.copy(dockerfile, context / "Dockerfile")
        # Hard links: the wheels are hundreds of megabytes and already in the cache, on the same file system.
        shutil.copytree(wheels, context / "wheels", copy_function=os.link)

    reference = image_reference(part.name, project_version(), digest)
    return _build_unless_current(engine, part.name, reference, digest, fill=fill, base=BASE_IMAGE)


def build_pause(engine: Engine) -> Built:
    """The pod sandbox image: steward_harness/pause compiled static (CGO_ENABLED=0) into a FROM scratch image."""
    sources = sorted(path for path in PAUSE_SOURCE.iterdir() if path.is_file())
    digest = inputs_digest((path.name, path.read_bytes()) for path in sources)

    def fill(context: Path) -> None:
        go = installed("go", "the Go toolchain")
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", "GOWORK": "off"}
        command = [go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(context / "pause"), "."]
        result = subprocess.run(command, cwd=PAUSE_SOURCE, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildError(f"go build of {PAUSE_SOURCE} failed (exit {result.returncode}):\n{result.stderr.strip()}")
        shutil.copy(PAUSE_SOURCE / "Dockerfile", context / "Dockerfile")

    return _build_unless_current(engine, "pause", PAUSE_IMAGE, digest, fill=fill, base=None)


def build_images(engine: Engine, root: Path = REPOSITORY) -> list[Built]:
    """The base (once), then every part's image from the sources and Dockerfiles in `root`, and the pause image;
    each rebuilt only when its inputs changed."""
    base_id = ensure_base(engine)
    built = [*(build_part(engine, part, base_id, root) for part in PARTS), build_pause(engine)]
    record = binaries.CACHE_DIR / "images.partial"
    record.write_text(json.dumps({image.name: image.reference for image in built}, indent=2) + "\n")
    record.replace(references_path())
    return built


def references_path() -> Path:
    """Where the references of the images built last are recorded, for whoever runs them later."""
    return binaries.CACHE_DIR / "images.json"


def image_references() -> dict[str, str]:
    """The reference of each image built last (predictor, operator, monitor, pause), by name."""
    try:
        recorded: dict[str, str] = json.loads(references_path().read_text())
    except FileNotFoundError:
        raise BuildError(f"no images have been built yet ({references_path()} is missing): run `make images`") from None
    return recorded


def _build_unless_current(
    engine: Engine, name: str, reference: str, digest: str, *, fill: Callable[[Path], None], base: str | None
) -> Built:
    """Build `reference` from the context `fill` writes, unless the engine has it built from the same `digest`."""
    started = time.monotonic()
    if engine.inputs(reference) == digest:
        binaries.say(f"{reference}: up to date")
        return Built(name, reference, time.monotonic() - started, reused=True)
    binaries.say(f"building {reference}")
    (binaries.CACHE_DIR / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="context-", dir=binaries.CACHE_DIR / "build") as work:
        fill(Path(work))
        engine.docker(*build_command(Path(work), reference, digest, base))
    _retire(engine, reference)
    seconds = time.monotonic() - started
    binaries.say(f"{reference}: built in {seconds:.0f} s")
    return Built(name, reference, seconds, reused=False)


def _retire(engine: Engine, reference: str) -> None:
    """Remove the images `reference` replaces (its repository's other tags), and the build stages left behind
    untagged: only images of steward.local repositories and of the labelled base, never anyone else's."""
    repository = reference.rsplit(":", 1)[0]
    tags = engine.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository).split()
    for old in (tag for tag in tags if tag != reference):
        engine.docker("image", "rm", old)
    engine.docker("image", "prune", "--force", f"--filter=label={INPUTS_LABEL}")


def probe(engine: Engine, reference: str, writable: Sequence[str]) -> Probe:
    """Run the image once as its own user on a read-only root (tmpfs at `writable`), its entry point given --help."""
    image = engine.inspect(reference)
    if image is None:
        raise BuildError(f"no image {reference} to probe")
    entrypoint = image["Config"].get("Entrypoint") or []
    started = time.monotonic()
    result = engine.attempt(*probe_command(reference, entrypoint, writable), timeout=300)
    seconds = time.monotonic() - started
    uid, root, *rest = [*result.stdout.splitlines(), "", ""]
    if not uid.isdigit():
        raise BuildError(f"{reference} did not run the probe (exit {result.returncode}):\n{result.stderr.strip()}")
    return Probe(int(uid), root == "read-only", result.returncode, "\n".join(rest) + result.stderr, seconds)


def probe_pause(engine: Engine) -> Probe:
    """Run the pause image on a read-only root, read the uid of its process, then stop it: it must exit 0 on SIGTERM
    at once (output: how long stopping took), where a process that ignored it would be killed after 10 s."""
    container = engine.docker("run", "--detach", "--network=none", "--read-only", "--cap-drop=ALL", PAUSE_IMAGE).strip()
    try:
        # docker top runs the host's ps on the container's processes, and insists on the pid column.
        uid = engine.docker("top", container, "-o", "pid,uid").split()[-1]
        started = time.monotonic()
        engine.docker("stop", "--time=10", container)
        seconds = time.monotonic() - started
        state = json.loads(engine.docker("container", "inspect", "--format", "{{json .State}}", container))
        read_only = json.loads(
            engine.docker("container", "inspect", "--format", "{{json .HostConfig.ReadonlyRootfs}}", container)
        )
    finally:
        engine.attempt("container", "rm", "--force", container, timeout=60)
    return Probe(int(uid), bool(read_only), int(state["ExitCode"]), f"stopped in {seconds:.1f} s", seconds)


def problems(built: Built, seen: Probe) -> list[str]:
    """What `seen` shows to be wrong with `built`: empty when it runs as it must."""
    pause = built.reference == PAUSE_IMAGE
    user = PAUSE_USER if pause else PROBE_USER
    found = [] if seen.uid == user else [f"runs as uid {seen.uid}, not {user}"]
    found += [] if seen.read_only else ["its root file system was writable: the probe did not run read-only"]
    if seen.exit_code != 0:
        found.append(f"exited {seen.exit_code}" + ("" if pause else f" on --help:\n{seen.output.strip()[-2000:]}"))
    elif not pause and "usage:" not in seen.output:
        found.append(f"--help printed no usage:\n{seen.output.strip()[-2000:]}")
    return found


def tool_reference(name: str) -> str:
    """The image of the pinned upstream tool `name` (KServe's controller, Traefik, CoreDNS)."""
    return f"{REGISTRY}/{name}:{upstream.TOOLS[name].module.version}"


def build_tool(engine: Engine, name: str) -> Built:
    """The image of upstream tool `name`: its binary, built from its module into the cache, alone on scratch and
    run as an unprivileged user, as its project's own images are."""
    binary = upstream.ensure_tool(name)
    command = upstream.TOOLS[name].command or f"/{name}"
    dockerfile = f'FROM scratch\nCOPY {name} {command}\nUSER 65532:65532\nENTRYPOINT ["{command}"]\n'
    digest = inputs_digest(
        [("binary", hashlib.sha256(binary.read_bytes()).hexdigest().encode()), ("Dockerfile", dockerfile.encode())]
    )

    def fill(context: Path) -> None:
        os.link(binary, context / name)
        (context / "Dockerfile").write_text(dockerfile)

    return _build_unless_current(engine, name, tool_reference(name), digest, fill=fill, base=None)


def export_node_images(directory: Path, engine: Engine | None = None, root: Path = REPOSITORY) -> dict[str, Path]:
    """Build (or reuse) every image a local node runs (Steward's, the pause image, the upstream tools') and write
    each as a `docker save` tarball into `directory`, for `ctr -n k8s.io images import`; the tarballs by image
    reference."""
    if engine is None:
        with Engine() as own:
            return export_node_images(directory, own, root)
    built = [*build_images(engine, root), *(build_tool(engine, name) for name in upstream.TOOLS)]
    return save_images(engine, built, directory)


def save_images(engine: Engine, built: Iterable[Built], directory: Path) -> dict[str, Path]:
    """`docker save` each of `built` into `directory` as <name>-<image id>.tar, unless that file is there already,
    and remove the tarballs of images it replaces; the tarballs by image reference."""
    directory.mkdir(parents=True, exist_ok=True)
    exported = {}
    for image in built:
        image_id = str((engine.inspect(image.reference) or {}).get("Id", "")).removeprefix("sha256:")
        tarball = directory / f"{image.name}-{image_id[:12]}.tar"
        if not tarball.exists():
            partial = tarball.with_suffix(".partial")
            engine.docker("save", "--output", str(partial), image.reference)
            partial.replace(tarball)
        for stale in directory.glob(f"{image.name}-*.tar"):
            if stale != tarball:
                stale.unlink()
        exported[image.reference] = tarball
    return exported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steward_harness.images",
        description=f"Build Steward's images offline: {BASE_IMAGE} debootstrapped from the host's Debian mirror "
        "(once), wheels built by pip on this machine, then the predictor, operator and monitor images from "
        f"their Dockerfiles and {PAUSE_IMAGE}, each with --network=none. Each image is run once to check it "
        "(its user, a read-only root, its entry point's --help), and its size is reported. The pinned upstream "
        f"tools a local node runs ({', '.join(upstream.TOOLS)}) get an image each, their binary on scratch.",
        epilog=f"Uses the Docker engine at DOCKER_HOST or the default socket; else starts dockerd with its data root "
        f"in {binaries.CACHE_DIR / 'docker'} (no bridge, no iptables rules) and stops it when done. An image whose "
        "inputs are unchanged is not rebuilt. Set STEWARD_CACHE_DIR to move the cache.",
    )
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="also write each image as a `docker save` tarball into DIR, for `ctr -n k8s.io images import`",
    )
    args = parser.parse_args(argv)
    # SIGTERM stops the engine it started as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with Engine() as engine:
            started = time.monotonic()
            built = build_images(engine)
            failed = False
            for image in built:
                part = next((part for part in PARTS if part.name == image.name), None)
                seen = probe_pause(engine) if part is None else probe(engine, image.reference, part.writable)
                found = problems(image, seen)
                failed = failed or bool(found)
                verdict = "; ".join(found) or f"uid {seen.uid}, read-only root, exit 0"
                binaries.say(f"checked {image.reference}: {verdict} ({seen.seconds:.1f} s)")
            tools = [build_tool(engine, name) for name in upstream.TOOLS]
            for reference in [BASE_IMAGE, *(image.reference for image in [*built, *tools])]:
                size = (engine.inspect(reference) or {}).get("Size", 0)
                print(f"{reference:56} {size / 1e6:7.0f} MB")
            if failed:
                return 1
            if args.export:
                for reference, tarball in save_images(engine, [*built, *tools], args.export).items():
                    print(f"{reference:56} {tarball}")
            binaries.say(f"done in {time.monotonic() - started:.0f} s")
    except BuildError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    return 0


def _sha256(path: Path) -> str:
    with path.open("rb") as content:
        return hashlib.file_digest(content, "sha256").hexdigest()


def _megabytes(directory: Path) -> int:
    return round(sum(path.stat().st_size for path in directory.iterdir()) / 1e6)


if __name__ == "__main__":
    sys.exit(main())
