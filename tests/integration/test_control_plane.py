"""The local control plane runs Kubernetes' own controllers (role aggregation, garbage collection, Jobs, service
accounts) and stops every server it started."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from steward_harness import controlplane
from steward_harness.controlplane import ControlPlane, ControlPlaneError
from steward_harness.kubectl import Kubectl

# Leases are in no built-in role and no Steward role aggregates them, so only this test can grant them to `view`.
GRANTED = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]}
AGGREGATION_TIMEOUT = 30.0


def test_a_role_aggregated_to_view_is_granted_to_users_bound_to_view(kubectl: Kubectl, namespace: str) -> None:
    user, role = f"viewer-{namespace}", f"steward-test-aggregate-to-view-{namespace}"
    kubectl.run("create", "rolebinding", "viewers", "--clusterrole=view", f"--user={user}", "-n", namespace)
    assert _can_i(kubectl, "get", user, namespace) == "no"

    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(_aggregated_to_view(role, GRANTED)))
    try:
        _await(lambda: GRANTED in _view_rules(kubectl), "the view ClusterRole to gain the aggregated rule")
        assert _can_i(kubectl, "get", user, namespace) == "yes"
        assert _can_i(kubectl, "delete", user, namespace) == "no", "a verb the aggregated role does not grant"
        assert _can_i(kubectl, "get", user, "default") == "no", "a namespace the user is not bound to view"
    finally:
        kubectl.run("delete", "clusterrole", role)

    _await(lambda: GRANTED not in _view_rules(kubectl), "the view ClusterRole to lose the deleted role's rule")
    assert _can_i(kubectl, "get", user, namespace) == "no"


def test_the_garbage_collector_removes_what_a_deleted_owner_leaves(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run("create", "configmap", "owner", "-n", namespace)
    uid = kubectl.json("get", "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": namespace,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(owned))
    kubectl.run("delete", "configmap", "owner", "-n", namespace)
    _await(lambda: not _exists(kubectl, "configmap", "owned", namespace), "the garbage collector to delete it")


def test_the_job_controller_makes_a_job_s_pod_under_the_namespace_s_service_account(
    kubectl: Kubectl, namespace: str
) -> None:
    kubectl.run("create", "job", "once", "--image=steward.local/none:0", "-n", namespace, "--", "true")
    _await(lambda: bool(_pods(kubectl, namespace)), "the job controller to create the Job's pod")
    (pod,) = _pods(kubectl, namespace)
    assert pod["spec"]["serviceAccountName"] == "default", "admitted by the ServiceAccount plugin"
    assert any(volume.get("projected") for volume in pod["spec"]["volumes"]), "with its account's token mounted"


def test_a_failed_start_names_the_failing_server_and_stop_ends_the_others(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(controlplane, "CONTROLLERS", ("no-such-controller",))
    plane = ControlPlane(directory=tmp_path / "plane")
    with pytest.raises(ControlPlaneError, match="kube-controller-manager exited") as failure:
        plane.start()
    assert "no-such-controller" in str(failure.value), "the error carries the controller manager's log"
    assert sorted(_servers_using(plane.directory)) == ["etcd", "kube-apiserver"], "running when the start failed"

    plane.stop(keep=True)
    assert not _servers_using(plane.directory)
    assert "no-such-controller" in plane.log("kube-controller-manager").read_text()


def _exists(kubectl: Kubectl, kind: str, name: str, namespace: str) -> bool:
    return kubectl.run("get", kind, name, "-n", namespace, check=False).returncode == 0


def _pods(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    return list(kubectl.json("get", "pods", "-n", namespace)["items"])


def _aggregated_to_view(name: str, rule: dict[str, list[str]]) -> dict[str, object]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [rule],
    }


def _view_rules(kubectl: Kubectl) -> list[dict[str, object]]:
    return list(kubectl.json("get", "clusterrole", "view").get("rules") or [])


def _can_i(kubectl: Kubectl, verb: str, user: str, namespace: str) -> str:
    # Exits 1 when the answer is no; either way the answer is the only line on stdout.
    result = kubectl.run(
        "auth", "can-i", verb, "leases.coordination.k8s.io", f"--as={user}", "-n", namespace, check=False
    )
    return result.stdout.strip()


def _await(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + AGGREGATION_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {AGGREGATION_TIMEOUT:.0f} s for {what}")
        time.sleep(0.2)


def _servers_using(directory: Path) -> list[str]:
    """The names of the live processes whose command line names `directory`: the servers of one control plane."""
    found = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if str(directory) in (process / "cmdline").read_bytes().decode(errors="replace"):
                found.append((process / "comm").read_text().strip())
        except OSError:
            continue
    return found
