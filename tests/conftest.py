"""Fixtures shared by all tests: the repository's paths, a real control plane for integration tests, and the pinned
helm."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from steward_harness import helm as helm_builds
from steward_harness.controlplane import ControlPlane
from steward_harness.kubectl import Kubectl
from tests.support import models

REPOSITORY = Path(__file__).resolve().parents[1]
CRDS = REPOSITORY / "crds"
CHART = REPOSITORY / "charts" / "steward"
EXAMPLES = sorted((REPOSITORY / "examples").glob("*.yaml"))
_STARTUP_KEY = pytest.StashKey[float]()

Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver for the whole session; kept with its logs when any test failed."""
    plane = ControlPlane()
    try:
        request.config.stash[_STARTUP_KEY] = plane.start()
    except BaseException:
        plane.stop(keep=True)
        raise
    yield plane
    failed = request.session.testsfailed > 0
    plane.stop(keep=failed)
    if failed:
        print(f"\ncontrol-plane logs kept in {plane.directory}")


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    """The real kubectl, as cluster admin, with Steward's CRDs installed and established."""
    client = Kubectl(control_plane.kubeconfig)
    client.install_crds(CRDS)
    return client


@pytest.fixture
def namespace(kubectl: Kubectl) -> str:
    """A fresh namespace per test, so tests never see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl.run("create", "namespace", name)
    return name


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, models.Trained]:
    """Real models on scikit-learn's bundled datasets, sealed into bundles once per session."""
    directory = tmp_path_factory.mktemp("bundles")
    return {
        "breast-cancer": models.breast_cancer(directory),
        "wine": models.wine(directory),
        "diabetes": models.diabetes(directory),
    }


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The pinned helm (built from the Go module proxy on first use), with its own empty homes so a user's
    repositories and plugins never leak in."""
    binary = helm_builds.ensure_helm()
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *args], env=env, cwd=REPOSITORY, capture_output=True, text=True, timeout=120, check=False
        )

    return run


def pytest_sessionstart(session: pytest.Session) -> None:
    """A SIGTERM (a CI timeout, `kill`) stops the tests as Ctrl-C does, so every fixture's teardown still runs and
    nothing a test started outlives it."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if _STARTUP_KEY in config.stash:
        terminalreporter.write_line(f"control plane started in {config.stash[_STARTUP_KEY]:.1f} s")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration starts real servers, and under tests/e2e a whole cluster; mark them so
    `-m "not integration and not e2e"` selects the unit tests."""
    for item in items:
        parts = item.path.relative_to(REPOSITORY).parts
        for marker in ("integration", "e2e"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))
