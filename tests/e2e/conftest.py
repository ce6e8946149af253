"""Fixtures for the end-to-end tests: one local cluster with a real node, KServe's controller and Traefik, started
once for the session and stopped with everything it added to the host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from steward_harness import node
from steward_harness.clusters import LocalCluster

HOST_STATE = pytest.StashKey[dict[str, object]]()


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
