"""The images cannot be built here (no container engine); check what can be checked without one."""

from __future__ import annotations

import re

from tests.conftest import REPOSITORY


def _final_stage(dockerfile: str) -> str:
    """Every stage runs on a slim base; return the last one, which is what the image ships."""
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert stages
    assert all(image.endswith("-slim") for image in stages)
    return dockerfile.rsplit("\nFROM ", 1)[1]


def _assert_runs_as_non_root(final: str) -> None:
    user = re.search(r"^USER (\S+)", final, flags=re.MULTILINE)
    assert user
    assert user[1] not in {"root", "0"}


def _assert_copied_paths_exist(dockerfile: str) -> None:
    # Every path the image copies exists, so a build does not fail on a moved folder.
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, flags=re.MULTILINE)
    assert sources
    for source in sources:
        for path in source.split():
            assert (REPOSITORY / path).exists(), path


def test_predictor_image_runs_as_a_non_root_user_on_a_slim_base() -> None:
    dockerfile = (REPOSITORY / "predictor" / "Dockerfile").read_text()
    final = _final_stage(dockerfile)
    _assert_runs_as_non_root(final)
    assert 'ENTRYPOINT ["python", "-m", "steward_predictor"]' in final
    assert "STEWARD_BUNDLE_URI=/mnt/models" in final
    _assert_copied_paths_exist(dockerfile)


def test_operator_image_runs_as_the_user_the_chart_expects_on_a_slim_base() -> None:
    dockerfile = (REPOSITORY / "operator" / "Dockerfile").read_text()
    final = _final_stage(dockerfile)
    _assert_runs_as_non_root(final)
    # The chart's securityContext says runAsUser 10001; the image must have that user, and run as it.
    assert "useradd --uid 10001" in final
    assert re.search(r"^USER 10001$", final, flags=re.MULTILINE)
    assert "'.[operator]'" in dockerfile
    assert "'model-steward[operator]'" in final
    # The root file system is read-only under the chart, so nothing may try to write bytecode.
    assert "PYTHONDONTWRITEBYTECODE=1" in final
    assert re.search(r"^EXPOSE 9090 8081$", final, flags=re.MULTILINE)
    assert final.rstrip().endswith('ENTRYPOINT ["steward-operator"]')
    # The entry point is a console script the wheel installs.
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    assert re.search(r'^steward-operator = "steward_operator\.__main__:main"$', pyproject, flags=re.MULTILINE)
    _assert_copied_paths_exist(dockerfile)


def test_monitor_image_runs_as_the_user_the_chart_expects_with_its_store_on_a_volume() -> None:
    dockerfile = (REPOSITORY / "monitor" / "Dockerfile").read_text()
    final = _final_stage(dockerfile)
    _assert_runs_as_non_root(final)
    assert "useradd --uid 10001" in final
    assert re.search(r"^USER 10001$", final, flags=re.MULTILINE)
    assert "'.[monitor]'" in dockerfile
    assert "'model-steward[monitor]'" in final
    assert "STEWARD_MONITOR_STORE=sqlite:////data/steward-monitor.db" in final
    assert re.search(r"^EXPOSE 8080$", final, flags=re.MULTILINE)
    assert final.rstrip().endswith('ENTRYPOINT ["steward-monitor"]')
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    assert re.search(r'^steward-monitor = "steward_monitor\.__main__:main"$', pyproject, flags=re.MULTILINE)
    _assert_copied_paths_exist(dockerfile)


def test_every_image_copies_every_package_the_wheel_holds() -> None:
    """The wheel is built from pyproject.toml, which names every package folder: a missing one fails the build."""
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    folders = re.search(r"^where = \[(.+)\]$", pyproject, flags=re.MULTILINE)
    assert folders
    for part in ("operator", "predictor", "monitor"):
        dockerfile = (REPOSITORY / part / "Dockerfile").read_text()
        for folder in re.findall(r'"([^"]+)"', folders[1]):
            assert f"COPY {folder}/ {folder}/" in dockerfile, (part, folder)
