"""Fixtures for the end-to-end tests: one local cluster with a real node, KServe's controller and Traefik, started
once for the session and stopped with everything it added to the host; a Prometheus on the node's address; and
Steward's chart, installed with helm by each release story for its own namespace."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from steward_harness import images, node
from steward_harness.clusters import LocalCluster
from steward_harness.node import NODE_IP
from steward_harness.prometheus import Prometheus
from tests.conftest import CHART, Helm

HOST_STATE = pytest.StashKey[dict[str, object]]()
ONLINE_NAMESPACE = "story"
"""Where the online release story plays."""
STREAMING_NAMESPACE = "streaming-story"
"""Where the streaming release story plays."""
BATCH_NAMESPACE = "batch-story"
"""Where the batch release story plays."""
SYSTEM = "steward-system"
"""Where the chart installs the operator and the monitor."""


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """The whole cluster; its directory (logs of every process and pod) is kept when any test failed. Once stopped,
    the host must be exactly as it was: addresses, routes, iptables rules, forwarding, mounts, namespaces."""
    cluster = LocalCluster()
    cluster.prepare()
    before = node.host_state()
    request.config.stash[HOST_STATE] = before
    try:
        cluster.start()
    except BaseException:
        cluster.stop(keep=True)
        raise
    yield cluster
    failed = request.session.testsfailed > 0
    cluster.stop(keep=failed)
    if failed:
        print(f"\ncluster logs kept in {cluster.directory}")
    after = node.host_state()
    left = {key: _difference(before[key], after[key]) for key in after if after[key] != before[key]}
    assert not left, f"the cluster left changes on the host: {left}"


def _difference(before: object, after: object) -> dict[str, list[str]]:
    def lines(state: object) -> set[str]:
        if isinstance(state, dict):
            return {f"{key}: {line}" for key, value in state.items() for line in value}
        return set(state) if isinstance(state, list) else {str(state)}

    return {"gone": sorted(lines(before) - lines(after)), "added": sorted(lines(after) - lines(before))}


@pytest.fixture(scope="session")
def prometheus(local_cluster: LocalCluster) -> Iterator[Prometheus]:
    """Prometheus on the node's address, so the operator's pod reaches it, finding pods through the API server."""
    server = Prometheus(
        directory=local_cluster.directory / "prometheus", host=NODE_IP, kubeconfig=local_cluster.plane.kubeconfig
    )
    server.start()
    yield server
    server.stop(keep=True)  # its log stays with the cluster's, which go when every test passed


def _values(prometheus: Prometheus, namespace: str) -> dict[str, Any]:
    references = images.image_references()

    def image(name: str) -> dict[str, str]:
        repository, tag = references[name].rsplit(":", 1)
        return {"repository": repository, "tag": tag}

    return {
        "image": {**image("operator"), "pullPolicy": "Never"},
        "predictorImage": image("predictor"),
        "monitor": {"image": image("monitor"), "persistence": {"enabled": False}},
        "prometheus": {"url": prometheus.url},
        "watchNamespaces": [namespace],
        "resyncSeconds": 2,
    }


@pytest.fixture(scope="module")
def chart(
    request: pytest.FixtureRequest,
    local_cluster: LocalCluster,
    prometheus: Prometheus,
    helm: Helm,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Helm]:
    """Steward's chart, installed with helm on the node from the images built here, watching the story module's
    NAMESPACE (made here); uninstalled after the module. Gives helm, bound to the cluster. Each story installs its
    own: one operator watching one namespace, as a team would run it."""
    namespace: str = request.module.NAMESPACE
    values = tmp_path_factory.mktemp("chart") / "values.yaml"
    values.write_text(yaml.safe_dump(_values(prometheus, namespace)))
    local_cluster.kubectl.run("create", "namespace", namespace)

    def bound(*args: str) -> subprocess.CompletedProcess[str]:
        return helm(*args, f"--kubeconfig={local_cluster.plane.kubeconfig}", f"--namespace={SYSTEM}")

    installed = bound(
        "install", "steward", str(CHART), "--create-namespace", f"--values={values}", "--wait", "--timeout=100s"
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    try:
        yield bound
    finally:
        bound("uninstall", "steward", "--wait", "--timeout=100s")
