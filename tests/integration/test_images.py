"""The images on a real Docker engine: built offline (or reused), each run as its chart runs it, and exported for
containerd."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from steward_harness import images, upstream
from steward_harness.base_image import BASE_IMAGE, base_digest
from steward_harness.binaries import BuildError
from steward_harness.engine import Engine

# A cold build debootstraps the base, builds every wheel and installs them into three images: minutes, not seconds.
pytestmark = pytest.mark.timeout(1800)


def _docker_network_objects() -> set[str]:
    """The interfaces and firewall chains a dockerd makes when it is allowed to: docker0, br-*, DOCKER*."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    found = {name for name in re.findall(r"^\d+: ([^:@]+)", links, re.MULTILINE) if name.startswith(("docker", "br-"))}
    iptables = shutil.which("iptables-save")
    if iptables:
        rules = subprocess.run([iptables], capture_output=True, text=True, check=False).stdout
        found |= set(re.findall(r"^:(DOCKER\S*)", rules, re.MULTILINE))
    return found


@pytest.fixture(scope="module")
def network_before() -> set[str]:
    return _docker_network_objects()


@pytest.fixture(scope="module")
def engine(network_before: set[str]) -> Iterator[Engine]:
    """The Docker engine at DOCKER_HOST or the default socket, else a dockerd started on the cache's data root.
    One that cannot be had fails every test here with the reason: these tests are never skipped."""
    docker = Engine()
    try:
        docker.start()
    except BuildError as error:
        docker.stop()
        pytest.fail(f"no Docker engine: {error}")
    yield docker
    docker.stop()


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the images are built from, taken once: files edited in the repository while these tests run
    cannot make one build differ from the next."""
    root = tmp_path_factory.mktemp("sources")
    dockerfiles = [images.REPOSITORY / part.name / "Dockerfile" for part in images.PARTS]
    for path in [*images.wheel_sources(), *dockerfiles]:
        copy = root / path.relative_to(images.REPOSITORY)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
    return root


@pytest.fixture(scope="module")
def built(engine: Engine, sources: Path) -> dict[str, images.Built]:
    """Every image, built now or reused from the cache, by name."""
    return {image.name: image for image in images.build_images(engine, sources)}


@pytest.mark.parametrize("part", images.PARTS, ids=lambda part: part.name)
def test_each_part_runs_as_uid_10001_on_a_read_only_root_and_answers_help(
    engine: Engine, built: dict[str, images.Built], part: images.Part
) -> None:
    seen = images.probe(engine, built[part.name].reference, part.writable)
    assert seen.uid == 10001
    assert seen.read_only
    assert seen.exit_code == 0, seen.output
    assert "usage:" in seen.output


def test_pause_runs_as_65535_and_exits_0_at_once_on_sigterm(engine: Engine, built: dict[str, images.Built]) -> None:
    assert built["pause"].reference == images.PAUSE_IMAGE
    seen = images.probe_pause(engine)
    assert seen.uid == 65535
    assert seen.read_only
    # A process that ignored SIGTERM would be killed after docker stop's 10 s, exiting 137.
    assert seen.exit_code == 0
    assert seen.seconds < 5


def test_the_base_is_bookworm_with_python_3_11_and_carries_its_recipe(engine: Engine) -> None:
    assert engine.inputs(BASE_IMAGE) == base_digest()
    version = engine.docker("run", "--rm", "--network=none", BASE_IMAGE, "python3", "--version")
    assert version.startswith("Python 3.11.")
    release = engine.docker("run", "--rm", "--network=none", BASE_IMAGE, "cat", "/etc/debian_version")
    assert release.startswith("12.")


def test_each_tag_is_the_version_and_the_digest_the_image_was_built_from(
    engine: Engine, sources: Path, built: dict[str, images.Built]
) -> None:
    for part in images.PARTS:
        reference = built[part.name].reference
        digest = engine.inputs(reference)
        assert digest
        assert reference == images.image_reference(part.name, images.project_version(sources), digest)


def test_the_references_last_built_are_recorded_for_whoever_runs_them(built: dict[str, images.Built]) -> None:
    assert images.image_references() == {name: image.reference for name, image in built.items()}


def test_images_whose_inputs_are_unchanged_are_not_rebuilt(
    engine: Engine, sources: Path, built: dict[str, images.Built]
) -> None:
    again = images.build_images(engine, sources)
    assert [image.reference for image in again] == [image.reference for image in built.values()]
    assert all(image.reused for image in again)


def test_no_bridge_interface_or_firewall_chain_is_added(engine: Engine, network_before: set[str]) -> None:
    assert _docker_network_objects() == network_before


def test_a_docker_host_that_does_not_answer_fails_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    with pytest.raises(BuildError, match=f"DOCKER_HOST=unix://{tmp_path}/nothing.sock does not answer"):
        Engine().start()


def test_exported_tarballs_hold_every_image_a_node_runs_and_are_written_once(
    engine: Engine, sources: Path, built: dict[str, images.Built], tmp_path: Path
) -> None:
    """What a node imports into its containerd (which the end-to-end tests then run): Steward's images, the pause
    image and one per upstream tool, each tarball tagged with its reference."""
    exported = images.export_node_images(tmp_path / "images", engine, sources)
    tools = {images.tool_reference(name) for name in upstream.TOOLS}
    assert set(exported) == {image.reference for image in built.values()} | tools
    for reference, tarball in exported.items():
        with tarfile.open(tarball) as archive:
            manifest = archive.extractfile("manifest.json")
            assert manifest
            assert json.load(manifest)[0]["RepoTags"] == [reference]
    # A second export of the same images writes nothing.
    written = {tarball: tarball.stat().st_mtime_ns for tarball in exported.values()}
    assert images.export_node_images(tmp_path / "images", engine, sources) == exported
    assert {tarball: tarball.stat().st_mtime_ns for tarball in exported.values()} == written
