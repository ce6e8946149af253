"""The local node behaves as a cluster's node does: pods run from images built here, find Services by name through
the cluster's DNS, answer `kubectl exec` and `kubectl logs`; and a node leaves the host as it found it."""

from __future__ import annotations

import pytest

from steward_harness import images, node
from steward_harness.clusters import LocalCluster
from steward_harness.kubectl import Kubectl
from tests.e2e.conftest import HOST_STATE


def _run_python_server(kubectl: Kubectl, namespace: str) -> str:
    """A Deployment answering HTTP on port 8000 from the predictor image's Python, behind a Service; its pod."""
    image = images.image_references()["predictor"]
    kubectl.run(
        "create",
        "deployment",
        "echo",
        f"--image={image}",
        "-n",
        namespace,
        "--port=8000",
        "--",
        "python",
        "-m",
        "http.server",
        "8000",
        "--directory",
        "/tmp",
    )
    kubectl.run("expose", "deployment", "echo", "--port=80", "--target-port=8000", "-n", namespace)
    kubectl.run("rollout", "status", "deployment/echo", "-n", namespace, "--timeout=90s", timeout=100)
    (pod,) = kubectl.json("get", "pods", "-n", namespace, "-l", "app=echo")["items"]
    return str(pod["metadata"]["name"])


def test_a_pod_finds_a_service_by_name_and_answers_exec_and_logs(local_cluster: LocalCluster) -> None:
    kubectl = local_cluster.kubectl
    kubectl.run("create", "namespace", "node-basics")
    pod = _run_python_server(kubectl, "node-basics")
    fetch = "import urllib.request; print(urllib.request.urlopen('http://echo.node-basics.svc.cluster.local/').status)"
    answered = kubectl.run("exec", pod, "-n", "node-basics", "--", "python", "-c", fetch)
    assert answered.stdout.strip() == "200"
    logs = kubectl.run("logs", pod, "-n", "node-basics").stdout
    assert '"GET / HTTP/1.1" 200' in logs


def test_the_cluster_dns_answers_for_services_only(local_cluster: LocalCluster) -> None:
    kubectl = local_cluster.kubectl
    kubectl.run("create", "namespace", "node-dns")
    client = _run_python_server(kubectl, "node-dns")
    resolve = (
        "import socket\n"
        "print(socket.gethostbyname('kubernetes.default.svc.cluster.local'))\n"
        "try:\n    socket.gethostbyname('example.com')\nexcept OSError:\n    print('unresolved')\n"
    )
    answer = kubectl.run("exec", client, "-n", "node-dns", "--", "python", "-c", resolve).stdout.split()
    service = kubectl.json("get", "service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    # Nothing outside the cluster is ever looked up: the cluster's DNS forwards nowhere.
    assert answer == [service, "unresolved"]


def test_the_host_shows_the_node_while_it_runs(local_cluster: LocalCluster, pytestconfig: pytest.Config) -> None:
    """What the session's teardown compares: while the node runs, its address, bridge, routes and rules show."""
    before = pytestconfig.stash[HOST_STATE]
    now = node.host_state()
    assert {key for key in now if now[key] != before[key]} >= {"addresses", "routes", "iptables", "mounts"}
    assert any(node.NODE_IP in line for line in now["addresses"])  # type: ignore[attr-defined]
