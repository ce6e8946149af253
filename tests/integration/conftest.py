"""Fixtures for integration tests: the third-party CRDs, the operator and a local data plane on the control
plane, one PostgreSQL server for the session, and an S3-compatible server for each module that asks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from steward_harness import upstream
from steward_harness.controlplane import ControlPlane
from steward_harness.dataplane import DataPlane
from steward_harness.kafka import Kafka
from steward_harness.kubectl import Kubectl
from steward_harness.monitors import Monitor
from steward_harness.object_stores import ObjectStore
from steward_harness.operators import Operator
from steward_harness.postgres import Postgres
from steward_monitor.stores import METADATA
from tests.support.deployments import Deployment

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


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A real S3 API on loopback (moto in server mode); yields the environment a client needs to reach it."""
    with ObjectStore() as store:
        yield store.environment


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest) -> Iterator[Kafka]:
    """A real Apache Kafka broker (one KRaft node from its Maven jars), started once for the session on free
    loopback ports; its data and logs are kept when any test failed."""
    broker = Kafka()
    try:
        broker.start()
    except BaseException:
        broker.stop(keep=True)
        raise
    yield broker
    failed = request.session.testsfailed > 0
    broker.stop(keep=failed)
    if failed:
        print(f"\nKafka data and logs kept in {broker.directory}")


@pytest.fixture(scope="session")
def cluster(kubectl: Kubectl) -> Kubectl:
    """kubectl on a control plane that also serves the pinned upstream CRDs of KServe, Gateway API, Istio and
    Traefik, with the Gateway the examples name (`ingress/public`) of a class that declares mirroring, as a
    gateway implementing it would."""
    kubectl.install_crds(upstream.crds())
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump_all(_MIRRORING_GATEWAY))
    kubectl.run(
        "patch", "gatewayclass", "steward-mirroring", "--subresource=status", "--type=merge", "-p", _MIRRORING_FEATURES
    )
    return kubectl


_MIRRORING_GATEWAY = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ingress"}},
    {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "steward-mirroring"},
        "spec": {"controllerName": "example.com/mirroring-gateway"},
    },
    {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "public", "namespace": "ingress"},
        "spec": {
            "gatewayClassName": "steward-mirroring",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
        },
    },
]
_MIRRORING_FEATURES = json.dumps(
    {
        "status": {
            "supportedFeatures": [{"name": "HTTPRouteRequestMirror"}, {"name": "HTTPRouteRequestPercentageMirror"}]
        }
    }
)


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


@pytest.fixture
def deploy(cluster: Kubectl, control_plane: ControlPlane, operated_namespace: str) -> Any:
    """Starts a ModelDeployment from a manifest in a namespace the operator serves, applied as Git applies it."""

    def start(manifest: dict[str, Any]) -> Deployment:
        deployment = Deployment(cluster, control_plane, operated_namespace, manifest)
        deployment.apply()
        return deployment

    return start


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL of an empty store."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    url: str = request.getfixturevalue("postgres")
    engine = sa.create_engine(url)
    METADATA.drop_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def monitor(store: str) -> Iterator[Monitor]:
    """A steward-monitor process over `store`, stopped when the test ends."""
    process = Monitor(store).start()
    yield process
    process.stop()
