"""The ModelDeployment API on a real API server: examples round-trip, bad manifests are refused, status is
guarded by its subresource, and kubectl shows columns and documentation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from steward_harness.kubectl import Kubectl
from steward_operator import specs
from tests.conftest import EXAMPLES, REPOSITORY

INVALID = sorted((REPOSITORY / "tests" / "invalid").glob("*.yaml"))


def _apply(kubectl: Kubectl, namespace: str, path: Path, *extra: str, check: bool = True) -> str:
    result = kubectl.run(
        "apply", "--server-side", "--field-manager=steward-tests", "-n", namespace, "-f", str(path), *extra, check=check
    )
    return result.stdout + result.stderr


def _get(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return kubectl.json("get", "modeldeployment", name, "-n", namespace)  # type: ignore[no-any-return]


def _contains(whole: Any, part: Any) -> bool:
    """Whether every field of `part` appears, with the same value, in `whole`."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(key in whole and _contains(whole[key], part[key]) for key in part)
    if isinstance(part, list):
        return isinstance(whole, list) and len(whole) == len(part) and all(map(_contains, whole, part))
    return bool(whole == part)


def test_control_plane_is_the_pinned_release(kubectl: Kubectl) -> None:
    version = json.loads(kubectl.run("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == "v1.34.4"


def test_rbac_is_enforced(kubectl: Kubectl, namespace: str) -> None:
    answer = kubectl.run("auth", "can-i", "create", "modeldeployments", "-n", namespace, "--as=nobody", check=False)
    assert answer.stdout.strip() == "no"
    assert kubectl.run("auth", "can-i", "create", "modeldeployments", "-n", namespace).stdout.strip() == "yes"


def test_service_account_tokens_are_issued_and_accepted(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    kubectl.run("create", "serviceaccount", "steward", "-n", namespace)
    token = kubectl.run("create", "token", "steward", "-n", namespace).stdout.strip()
    config = yaml.safe_load(kubectl.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    as_service_account = Kubectl(tmp_path / "kubeconfig")
    as_service_account.kubeconfig.write_text(yaml.safe_dump(config))
    who = json.loads(as_service_account.run("auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:steward"
    # Authenticated, but RBAC grants it nothing.
    assert as_service_account.run("get", "md", "-n", namespace, check=False).returncode != 0


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_round_trips_with_only_defaults_added(kubectl: Kubectl, namespace: str, path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    name = manifest["metadata"]["name"]

    assert "serverside-applied (server dry run)" in _apply(kubectl, namespace, path, "--dry-run=server")
    with pytest.raises(Exception, match="NotFound"):
        _get(kubectl, namespace, name)

    _apply(kubectl, namespace, path)
    stored = _get(kubectl, namespace, name)
    assert _contains(stored["spec"], manifest["spec"]), "the server changed a field the manifest set"
    # The server's defaults are exactly the models' defaults: the CRD and the code agree.
    typed = specs.ModelDeploymentSpec.model_validate(manifest["spec"])
    assert stored["spec"] == typed.model_dump(mode="json", by_alias=True, exclude_none=True)
    # Not observed yet, as kstatus (Flux) and Argo CD read it, until the operator writes status.
    assert stored["status"] == {"observedGeneration": 0}

    # Re-applying the unchanged file is a no-op: nothing for a GitOps tool to fight over.
    generation = stored["metadata"]["generation"]
    _apply(kubectl, namespace, path)
    assert _get(kubectl, namespace, name)["metadata"]["generation"] == generation


@pytest.mark.parametrize("path", INVALID, ids=lambda path: path.stem)
def test_invalid_manifest_is_refused_by_the_server(kubectl: Kubectl, namespace: str, path: Path) -> None:
    expected = re.findall(r"^# expect: (.+)$", path.read_text(), flags=re.MULTILINE)
    assert expected, f"{path.name} says nothing about the error it expects"
    # Server-side apply: kubectl only parses YAML and sends it; the verdict is the API server's.
    message = _apply(kubectl, namespace, path, check=False)
    assert "Error from server" in message or "is invalid" in message, message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in: {message}"
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    assert kubectl.run("get", "modeldeployment", name, "-n", namespace, check=False).returncode != 0


def test_serving_mode_is_immutable(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    manifest = yaml.safe_load((REPOSITORY / "examples" / "online.yaml").read_text())
    _apply(kubectl, namespace, REPOSITORY / "examples" / "online.yaml")
    manifest["spec"]["serving"] = {
        "mode": "batch",
        "batch": {"schedule": "@daily", "input": {"uri": "s3://in/"}, "output": {"uri": "s3://out/"}},
    }
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(manifest))
    message = _apply(kubectl, namespace, changed, check=False)
    assert "spec.serving.mode" in message
    assert "serving.mode is immutable" in message


def test_status_changes_only_through_its_subresource(kubectl: Kubectl, namespace: str) -> None:
    _apply(kubectl, namespace, REPOSITORY / "examples" / "online.yaml")
    status = {
        "status": {
            "phase": "Canary",
            "incumbent": {"version": "2024-06-01", "bundle": "s3://models/churn/2024-06-01/"},
            "challenger": {"version": "2024-07-01", "bundle": "s3://models/churn/2024-07-01/"},
            "weights": {"incumbent": 75, "challenger": 25, "shadow": 0},
        }
    }
    # A write to the main resource cannot touch status...
    kubectl.run("patch", "modeldeployment", "churn", "-n", namespace, "--type=merge", "-p", json.dumps(status))
    assert _get(kubectl, namespace, "churn")["status"] == {"observedGeneration": 0}

    # ...the status subresource can, and cannot touch spec in turn.
    both = {**status, "spec": {"model": {"version": "hijacked", "bundle": "s3://elsewhere/"}}}
    kubectl.run(
        "patch",
        "modeldeployment",
        "churn",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(both),
    )
    stored = _get(kubectl, namespace, "churn")
    assert stored["status"]["phase"] == "Canary"
    assert stored["spec"]["model"]["version"] == "2024-06-01"
    specs.ModelDeploymentStatus.model_validate(stored["status"])

    table = kubectl.run("get", "modeldeployment", "churn", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "INCUMBENT", "CHALLENGER", "WEIGHT", "AGE"]
    assert table[1].split()[:5] == ["churn", "Canary", "2024-06-01", "2024-07-01", "25"]
    wide = kubectl.run("get", "md", "churn", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-3:] == ["MODE", "OWNER", "AGE"]


def test_status_is_validated_too(kubectl: Kubectl, namespace: str) -> None:
    _apply(kubectl, namespace, REPOSITORY / "examples" / "online.yaml")
    result = kubectl.run(
        "patch",
        "md",
        "churn",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Winning"}}),
        check=False,
    )
    assert result.returncode != 0
    assert 'status.phase: Unsupported value: "Winning"' in result.stderr


def test_explain_reads_like_documentation(kubectl: Kubectl) -> None:
    rollout = kubectl.run("explain", "modeldeployment.spec.rollout", "--recursive").stdout
    for field in ("traffic", "provider", "shadow", "canary", "steps", "guardrails", "confidence", "rollbackWindow"):
        assert re.search(rf"^\s+{field}\s", rollout, flags=re.MULTILINE), f"{field} missing:\n{rollout}"
    # explain wraps long lines; compare words, not layout.
    steps = " ".join(kubectl.run("explain", "md.spec.rollout.canary.steps").stdout.split())
    assert "strictly increasing within 1..100" in steps
    owner = " ".join(kubectl.run("explain", "modeldeployments.spec.owner").stdout.split())
    assert "Steward refuses a model without an owner" in owner


def test_a_stale_write_is_refused_with_a_conflict(kubectl: Kubectl, namespace: str) -> None:
    _apply(kubectl, namespace, REPOSITORY / "examples" / "online.yaml")
    stale = _get(kubectl, namespace, "churn")
    kubectl.run("label", "md", "churn", "-n", namespace, "touched=yes")
    stale["spec"]["model"]["version"] = "2024-07-01"
    result = kubectl.run("replace", "-f", "-", stdin=json.dumps(stale), check=False)
    assert result.returncode != 0
    assert "the object has been modified; please apply your changes to the latest version" in result.stderr
    assert _get(kubectl, namespace, "churn")["spec"]["model"]["version"] == "2024-06-01"
