"""Building the images offline: the Dockerfiles, the inputs each build is keyed on, the mirror, and the commands."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from steward_harness import base_image, binaries, engine, images
from tests.conftest import REPOSITORY

# Docker's grammar for a tag.
TAG = re.compile(r"[\w][\w.-]{0,127}")
PART_NAMES = [part.name for part in images.PARTS]


def _dockerfile(part: str) -> str:
    return (REPOSITORY / part / "Dockerfile").read_text()


def _instructions(dockerfile: str) -> list[str]:
    """The instructions, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _final_stage(dockerfile: str) -> list[str]:
    instructions = _instructions(dockerfile)
    last = max(index for index, line in enumerate(instructions) if line.startswith("FROM "))
    return instructions[last:]


class TestDockerfiles:
    @pytest.mark.parametrize("part", PART_NAMES)
    def test_the_base_is_python_slim_unless_a_build_names_another(self, part: str) -> None:
        instructions = _instructions(_dockerfile(part))
        assert instructions[0] == "ARG BASE=python:3.11-slim"
        stages = [line for line in instructions if line.startswith("FROM ")]
        assert stages == ["FROM ${BASE} AS build", "FROM ${BASE}"]

    @pytest.mark.parametrize("part", PART_NAMES)
    def test_wheels_in_the_context_are_installed_offline_and_built_from_the_source_otherwise(self, part: str) -> None:
        (build,) = [line for line in _instructions(_dockerfile(part)) if line.startswith("RUN python3 -m venv")]
        assert (
            f"if [ ! -d wheels ]; then /opt/steward/bin/pip wheel --no-cache-dir --wheel-dir wheels '.[{part}]'"
            in build
        )
        assert f"pip install --no-cache-dir --no-index --find-links=wheels 'model-steward[{part}]'" in build

    @pytest.mark.parametrize("part", PART_NAMES)
    def test_the_image_runs_as_the_user_the_chart_expects_with_the_venv_first_on_path(self, part: str) -> None:
        final = _final_stage(_dockerfile(part))
        assert any(line.startswith("RUN ") and "useradd --uid 10001 " in line for line in final)
        assert "USER 10001" in final
        assert "COPY --from=build /opt/steward /opt/steward" in final
        (env,) = [line for line in final if line.startswith("ENV ")]
        assert env.startswith("ENV PATH=/opt/steward/bin:$PATH ")

    def test_the_predictor_serves_the_bundle_kserve_places_and_has_openmp(self) -> None:
        final = _final_stage(_dockerfile("predictor"))
        assert final[-1] == 'ENTRYPOINT ["python", "-m", "steward_predictor"]'
        assert any("STEWARD_BUNDLE_URI=/mnt/models" in line for line in final)
        assert any("if ! dpkg -s libgomp1" in line and "apt-get install" in line for line in final)
        assert "EXPOSE 8080" in final

    @pytest.mark.parametrize(("part", "ports"), [("operator", "9090 8081"), ("monitor", "8080")])
    def test_a_console_script_is_the_entry_point_and_no_bytecode_is_written(self, part: str, ports: str) -> None:
        final = _final_stage(_dockerfile(part))
        assert final[-1] == f'ENTRYPOINT ["steward-{part}"]'
        assert f"EXPOSE {ports}" in final
        # The root file system is read-only under the chart.
        assert any("PYTHONDONTWRITEBYTECODE=1" in line for line in final if line.startswith("ENV "))
        scripts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts[f"steward-{part}"] == f"steward_{part}.__main__:main"

    def test_the_monitor_is_checked_with_its_store_directory_writable(self) -> None:
        store = re.search(r"STEWARD_MONITOR_STORE=sqlite:///(\S+)", _dockerfile("monitor"))
        assert store
        (monitor,) = [part for part in images.PARTS if part.name == "monitor"]
        assert str(Path(store[1]).parent) in monitor.writable

    def test_the_repository_as_context_sends_exactly_what_the_wheel_is_built_from(self) -> None:
        lines = (REPOSITORY / ".dockerignore").read_text().splitlines()
        rules = [line for line in lines if line and not line.startswith("#")]
        assert rules[0] == "*"
        allowed = {rule.removeprefix("!").rstrip("/") for rule in rules if rule.startswith("!")}
        assert allowed == {str(path.relative_to(REPOSITORY)).split("/")[0] for path in images.wheel_sources()}


class TestInputs:
    def test_each_input_is_framed_so_no_two_different_sets_hash_alike(self) -> None:
        assert engine.inputs_digest([("a", b"bc")]) != engine.inputs_digest([("ab", b"c")])
        assert engine.inputs_digest([("a", b""), ("b", b"")]) != engine.inputs_digest([("b", b""), ("a", b"")])
        assert engine.inputs_digest([("a", b"x")]) == engine.inputs_digest([("a", b"x")])

    def test_the_base_is_rebuilt_when_its_package_list_changes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        before = base_image.base_digest()
        monkeypatch.setattr(base_image, "BASE_PACKAGES", (*base_image.BASE_PACKAGES, "curl"))
        assert base_image.base_digest() != before

    @staticmethod
    def _source_tree(root: Path) -> None:
        (root / "pyproject.toml").write_text(
            '[project]\nname = "x"\nversion = "1.0"\nreadme = "README.md"\n'
            '[tool.setuptools.packages.find]\nwhere = ["operator", "harness"]\n'
        )
        (root / "README.md").write_text("# x\n")
        for package in ("operator/steward_operator", "harness/steward_harness"):
            (root / package).mkdir(parents=True)
            (root / package / "__init__.py").write_text("")

    def test_wheels_are_rebuilt_when_a_source_file_changes_or_appears(self, tmp_path: Path) -> None:
        self._source_tree(tmp_path)
        before = images.wheels_digest("operator", tmp_path)
        (tmp_path / "harness" / "steward_harness" / "__init__.py").write_text("VERSION = 2\n")
        edited = images.wheels_digest("operator", tmp_path)
        (tmp_path / "operator" / "steward_operator" / "py.typed").write_text("")
        added = images.wheels_digest("operator", tmp_path)
        (tmp_path / "README.md").write_text("# y\n")
        readme = images.wheels_digest("operator", tmp_path)
        assert len({before, edited, added, readme}) == 4
        assert images.wheels_digest("monitor", tmp_path) != readme

    def test_bytecode_build_metadata_and_dockerfiles_do_not_rebuild_wheels(self, tmp_path: Path) -> None:
        self._source_tree(tmp_path)
        before = images.wheels_digest("operator", tmp_path)
        (tmp_path / "operator" / "Dockerfile").write_text("FROM scratch\n")
        (tmp_path / "operator" / "steward_operator" / "__pycache__").mkdir()
        (tmp_path / "operator" / "steward_operator" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
        (tmp_path / "harness" / "x.egg-info").mkdir()
        (tmp_path / "harness" / "x.egg-info" / "PKG-INFO").write_text("")
        assert images.wheels_digest("operator", tmp_path) == before

    def test_cached_wheels_for_unchanged_sources_are_reused_without_pip(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        source = tmp_path / "source"
        source.mkdir()
        self._source_tree(source)
        monkeypatch.setattr(binaries, "CACHE_DIR", tmp_path / "cache")
        cached = tmp_path / "cache" / "wheels" / f"operator-{images.wheels_digest('operator', source)[:16]}"
        cached.mkdir(parents=True)
        (cached / images.WHEEL_MANIFEST).write_text("")

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"ran {args}")

        monkeypatch.setattr(subprocess, "run", refuse)
        assert images.ensure_wheels("operator", source) == cached

    def test_the_tag_is_the_version_and_the_inputs_digest(self) -> None:
        digest = engine.inputs_digest([("a", b"b")])
        reference = images.image_reference("predictor", "0.1.0.dev0", digest)
        assert reference == f"steward.local/predictor:0.1.0.dev0-{digest[:12]}"
        assert TAG.fullmatch(reference.split(":")[1])

    def test_a_version_with_characters_a_tag_cannot_hold_still_makes_a_valid_tag(self) -> None:
        reference = images.image_reference("monitor", "1.2.0+local.7", "f" * 64)
        assert reference == "steward.local/monitor:1.2.0-local.7-ffffffffffff"
        assert TAG.fullmatch(reference.split(":")[1])


class TestReferences:
    def test_the_references_built_last_are_read_back(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(binaries, "CACHE_DIR", tmp_path)
        images.references_path().write_text('{"predictor": "steward.local/predictor:1-abc"}')
        assert images.image_references() == {"predictor": "steward.local/predictor:1-abc"}

    def test_before_any_build_the_error_says_what_to_run(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(binaries, "CACHE_DIR", tmp_path)
        with pytest.raises(binaries.BuildError, match=r"no images have been built yet .* run `make images`"):
            images.image_references()


class TestCommands:
    def test_a_part_is_built_offline_on_the_debootstrapped_base(self, tmp_path: Path) -> None:
        command = images.build_command(tmp_path, "steward.local/operator:1-abc", "abc", base_image.BASE_IMAGE)
        assert command[0] == "build"
        assert "--network=none" in command
        assert "--build-arg=BASE=steward-base:bookworm" in command
        assert f"--label={engine.INPUTS_LABEL}=abc" in command
        assert "--tag=steward.local/operator:1-abc" in command
        assert command[-1] == str(tmp_path)

    def test_pause_is_built_from_scratch_with_no_base_to_replace(self, tmp_path: Path) -> None:
        command = images.build_command(tmp_path, images.PAUSE_IMAGE, "abc", None)
        assert "--network=none" in command
        assert not any(argument.startswith("--build-arg") for argument in command)

    def test_the_probe_runs_the_entry_point_as_the_image_user_offline_read_only_and_unprivileged(self) -> None:
        command = images.probe_command("steward.local/monitor:1-abc", ["steward-monitor"], ["/tmp", "/data"])
        image = command.index("steward.local/monitor:1-abc")
        options = command[:image]
        assert {"--rm", "--network=none", "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges"} <= set(
            options
        )
        assert [option for option in options if option.startswith("--tmpfs")] == ["--tmpfs=/tmp", "--tmpfs=/data"]
        # The image's own USER decides who runs it.
        assert not any(option.startswith(("--user", "-u")) for option in options)
        assert command[image + 1 : image + 2] == ["-c"]
        assert command[-2:] == ["steward-monitor", "--help"]

    def test_dockerd_adds_no_bridge_route_or_firewall_rule_and_keeps_to_the_cache(self, tmp_path: Path) -> None:
        command = engine.dockerd_command("dockerd", tmp_path / "docker", tmp_path / "dockerd")
        for flag in ("--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false"):
            assert flag in command
        assert "--oom-score-adjust=0" in command
        paths = [argument.split("=", 1)[1].removeprefix("unix://") for argument in command[1:] if "/" in argument]
        assert paths
        assert all(Path(path).is_relative_to(tmp_path) for path in paths)

    def test_its_containerd_keeps_to_the_cache_and_runs_no_cri(self, tmp_path: Path) -> None:
        config = tomllib.loads(engine.containerd_config(tmp_path / "root", tmp_path / "state"))
        assert config["disabled_plugins"] == ["io.containerd.grpc.v1.cri"]
        paths = [config["root"], config["state"], config["grpc"]["address"]]
        paths.append(config["plugins"]["io.containerd.internal.v1.opt"]["path"])
        assert all(Path(path).is_relative_to(tmp_path) for path in paths)


class TestChecks:
    PART = images.Built("operator", "steward.local/operator:1-abc", 1.0, reused=False)
    PAUSE = images.Built("pause", images.PAUSE_IMAGE, 1.0, reused=False)

    def test_a_part_that_runs_as_it_must_has_no_problems(self) -> None:
        seen = images.Probe(10001, read_only=True, exit_code=0, output="usage: steward-operator", seconds=1)
        assert images.problems(self.PART, seen) == []

    @pytest.mark.parametrize(
        ("seen", "problem"),
        [
            (images.Probe(0, True, 0, "usage: x", 1), "runs as uid 0, not 10001"),
            (images.Probe(10001, False, 0, "usage: x", 1), "root file system was writable"),
            (images.Probe(10001, True, 1, "Traceback: read-only file system", 1), "exited 1 on --help"),
            (images.Probe(10001, True, 0, "", 1), "printed no usage"),
        ],
    )
    def test_each_way_a_part_can_fail_is_named(self, seen: images.Probe, problem: str) -> None:
        (found,) = images.problems(self.PART, seen)
        assert problem in found

    def test_pause_must_run_as_65535_and_exit_0_when_stopped(self) -> None:
        assert images.problems(self.PAUSE, images.Probe(65535, True, 0, "stopped in 0.1 s", 0.1)) == []
        killed = images.problems(self.PAUSE, images.Probe(0, True, 137, "stopped in 10.2 s", 10.2))
        assert killed == ["runs as uid 0, not 65535", "exited 137"]


HOST_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


class TestMirror:
    def test_the_hosts_deb822_source_for_the_suite_is_used(self) -> None:
        assert base_image.debian_mirror([HOST_SOURCES]) == "http://deb.debian.org/debian"

    def test_a_one_line_source_with_options_is_read(self) -> None:
        sources = (
            "# deb http://old.example/debian bookworm main\n"
            "deb [arch=amd64] http://mirror.example/debian/ bookworm main contrib\n"
        )
        assert base_image.debian_mirror([sources]) == "http://mirror.example/debian"

    def test_security_updates_source_only_and_disabled_entries_are_passed_over(self) -> None:
        sources = [
            "deb http://security.example/debian-security bookworm-security main\n",
            "deb-src http://source.example/debian bookworm main\n",
            "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n",
            "deb http://local.example/debian bookworm main\n",
        ]
        assert base_image.debian_mirror(sources) == "http://local.example/debian"

    def test_a_third_partys_repository_for_the_same_suite_is_not_a_debian_mirror(self) -> None:
        third_party = (
            "deb [signed-by=/usr/share/keyrings/microsoft-prod.gpg] https://packages.microsoft.com/debian/12/prod "
            "bookworm main\n"
        )
        assert base_image.debian_mirror([third_party, HOST_SOURCES]) == "http://deb.debian.org/debian"

    def test_debians_own_mirror_when_the_host_names_none(self) -> None:
        assert (
            base_image.debian_mirror(["deb http://archive.ubuntu.com/ubuntu jammy main\n"]) == base_image.DEBIAN_MIRROR
        )
        assert base_image.debian_mirror([]) == base_image.DEBIAN_MIRROR

    def test_only_files_apt_reads_are_read(self, tmp_path: Path) -> None:
        (tmp_path / "sources.list.d").mkdir()
        (tmp_path / "sources.list").write_text("deb http://a.example/debian bookworm main\n")
        (tmp_path / "sources.list.d" / "b.sources").write_text(HOST_SOURCES)
        (tmp_path / "sources.list.d" / "c.list").write_text("deb http://c.example/debian bookworm main\n")
        (tmp_path / "sources.list.d" / "d.list.disabled").write_text("deb http://d.example/debian bookworm main\n")
        assert base_image.host_apt_sources(tmp_path) == [
            "deb http://a.example/debian bookworm main\n",
            HOST_SOURCES,
            "deb http://c.example/debian bookworm main\n",
        ]
