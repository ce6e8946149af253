"""Fixtures for integration tests: the third-party CRDs, the operator and a local data plane on the control
plane, and one PostgreSQL server for the session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from steward_harness.controlplane import ControlPlane
from steward_harness.dataplane import DataPlane
from steward_harness.kubectl import Kubectl
from steward_harness.operators import Operator
from steward_harness.postgres import Postgres
from tests.conftest import REPOSITORY

_STARTUP_KEY = pytest.StashKey[float]()
OPERATED = "op-"


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh database on a real PostgreSQL server, started once for the session on a
    free loopback port; its data and log are kept when any test failed."""
    server = Postgres()
    try:
        request.config.stash[_STARTUP_KEY] = server.start()
    except BaseException:
        server.stop(keep=True)
        raise
    yield server.url
    failed = request.session.testsfailed > 0
    server.stop(keep=failed)
    if failed:
        print(f"\nPostgreSQL data and log kept in {server.directory}")


@pytest.fixture(scope="session")
def cluster(kubectl: Kubectl) -> Kubectl:
    """kubectl on a control plane that also has the InferenceService, HTTPRoute and VirtualService kinds."""
    kubectl.install_crds(REPOSITORY / "tests" / "crds")
    return kubectl


@pytest.fixture(scope="session")
def data_plane(control_plane: ControlPlane, cluster: Kubectl) -> Iterator[DataPlane]:
    """Stands in for KServe in the operator's namespaces: reports InferenceServices ready, except versions a test
    holds back."""
    plane = DataPlane(control_plane.server, control_plane.ssl_context(), prefix=OPERATED).start()
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def operator(request: pytest.FixtureRequest, control_plane: ControlPlane, data_plane: DataPlane) -> Iterator[Operator]:
    """The real operator process, serving the namespaces made by `operated_namespace`. Tests may kill and
    restart it; it is running again when each test ends. Its log is printed when any test failed."""
    process = Operator(control_plane.kubeconfig, [f"{OPERATED}*"], env={"STEWARD_RESYNC_SECONDS": "5"})
    process.start()
    yield process
    process.stop()
    if request.session.testsfailed:
        print(f"\noperator log: {process.log}")


@pytest.fixture
def operated_namespace(kubectl: Kubectl, operator: Operator) -> str:
    """A fresh namespace the operator serves (others are left to tests that apply children themselves)."""
    name = f"{OPERATED}{uuid.uuid4().hex[:10]}"
    kubectl.run("create", "namespace", name)
    return name


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if _STARTUP_KEY in config.stash:
        terminalreporter.write_line(f"PostgreSQL started in {config.stash[_STARTUP_KEY]:.1f} s")
