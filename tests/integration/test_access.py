"""Who may do what, as the API server enforces it with the chart's roles: viewers read, editors apply
ModelDeployments, commands are a grant of their own, and no user writes the records rollbacks are taken from."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from steward_harness.kubectl import Kubectl
from tests.conftest import CHART, Helm
from tests.support.deployments import example
from tests.support.waiting import wait_until

MODEL_DEPLOYMENTS = "modeldeployments.steward.dev"
MODEL_COMMANDS = "modelcommands.steward.dev"


@pytest.fixture(scope="module")
def roles(cluster: Kubectl, helm: Helm) -> Iterator[str]:
    """The chart's user roles and its sender check, applied as `helm install` would; yields the roles' prefix."""
    release_namespace = f"steward-{uuid.uuid4().hex[:6]}"
    result = helm(
        "template", "steward", str(CHART), "--namespace", release_namespace, "--show-only", "templates/access.yaml"
    )
    assert result.returncode == 0, result.stderr
    rendered = result.stdout
    cluster.run("apply", "-f", "-", stdin=rendered)
    # An admission policy takes effect a moment after it is created.
    posing = json.dumps(_command("default", "promote", "someone-else"))
    wait_until(lambda: cluster.run("create", "--dry-run=server", "-f", "-", stdin=posing, check=False).returncode)
    yield f"steward-{release_namespace}"
    cluster.run("delete", "--ignore-not-found", "-f", "-", stdin=rendered)


def _bind(cluster: Kubectl, namespace: str, user: str, *roles: str) -> None:
    for role in roles:
        cluster.run(
            "create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}", "-n", namespace
        )


def _can(cluster: Kubectl, user: str, namespace: str, verb: str, resource: str, *, subresource: str = "") -> bool:
    arguments = ["auth", "can-i", verb, resource, f"--as={user}", "-n", namespace]
    if subresource:
        arguments.append(f"--subresource={subresource}")
    answer = cluster.run(*arguments, check=False).stdout.strip()
    assert answer in {"yes", "no"}, answer
    return answer == "yes"


# (verb, resource, subresource): what each kind of user may do in their namespace, and what no user may.
_READ = {("get", MODEL_DEPLOYMENTS, ""), ("list", MODEL_COMMANDS, "")}
_APPLY = {("create", MODEL_DEPLOYMENTS, ""), ("patch", MODEL_DEPLOYMENTS, ""), ("delete", MODEL_DEPLOYMENTS, "")}
_SEND = {("create", MODEL_COMMANDS, "")}
_OPERATORS_ONLY = {
    ("patch", MODEL_DEPLOYMENTS, "status"),
    ("update", MODEL_DEPLOYMENTS, "status"),
    ("patch", MODEL_COMMANDS, ""),
    ("patch", MODEL_COMMANDS, "status"),
}
_ASKED = sorted(_READ | _APPLY | _SEND | _OPERATORS_ONLY)
_GRANTED = {"view": _READ, "edit": _READ | _APPLY, "command": _READ | _SEND, "admin": _READ | _APPLY | _SEND}


def test_the_built_in_roles_read_and_apply_and_commands_are_a_grant_of_their_own(
    cluster: Kubectl, namespace: str, roles: str
) -> None:
    _bind(cluster, namespace, "viv", "view")
    _bind(cluster, namespace, "ed", "edit")
    _bind(cluster, namespace, "cam", f"{roles}-command")
    _bind(cluster, namespace, "ada", "admin")
    # Kubernetes' own controller folds the chart's roles into the built-in ones.
    wait_until(lambda: _can(cluster, "ada", namespace, "create", MODEL_COMMANDS))

    wrong = [
        f"{user} {verb} {resource}{'/' + subresource if subresource else ''}: {'yes' if allowed else 'no'}"
        for user, role in (("viv", "view"), ("ed", "edit"), ("cam", "command"), ("ada", "admin"))
        for verb, resource, subresource in _ASKED
        if (allowed := _can(cluster, user, namespace, verb, resource, subresource=subresource))
        != ((verb, resource, subresource) in _GRANTED[role])
    ]
    assert not wrong, "\n".join(wrong)
    # Nothing outside the namespace they were given.
    assert not _can(cluster, "ada", "default", "create", MODEL_COMMANDS)


def _command(namespace: str, action: str, by: str, **spec: str) -> dict[str, Any]:
    return {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "ModelCommand",
        "metadata": {"generateName": f"churn-{action}-", "namespace": namespace},
        "spec": {"modelDeployment": "churn", "action": action, "requestedBy": by, **spec},
    }


def test_a_forged_history_cannot_make_the_operator_serve_a_bundle(
    cluster: Kubectl, operated_namespace: str, roles: str
) -> None:
    namespace = operated_namespace
    cluster.run("apply", "-n", namespace, "-f", "-", stdin=json.dumps(example("online.yaml")))
    wait_until(lambda: cluster.json("get", "md", "churn", "-n", namespace).get("status", {}).get("phase") == "Stable")
    _bind(cluster, namespace, "mallory", "edit", f"{roles}-command")
    wait_until(lambda: _can(cluster, "mallory", namespace, "create", MODEL_DEPLOYMENTS))

    # The attack: write a history entry naming the attacker's bundle...
    earlier = datetime.now(UTC) - timedelta(hours=1)
    evil = {
        "version": "evil",
        "bundle": "s3://attacker/evil/",
        "started": earlier.isoformat(),
        "ended": datetime.now(UTC).isoformat(),
        "outcome": "replaced",
    }
    history = cluster.json("get", "md", "churn", "-n", namespace)["status"]["history"]
    forged = {"status": {"history": [evil, *history]}}
    written = cluster.run(
        "patch",
        "md",
        "churn",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(forged),
        "--as=mallory",
        check=False,
    )
    assert written.returncode != 0
    assert "forbidden" in written.stderr

    # ...then roll back to it: the operator takes targets only from its own records.
    sent = cluster.run(
        "create",
        "-o",
        "json",
        "-f",
        "-",
        "--as=mallory",
        stdin=json.dumps(_command(namespace, "rollback", "mallory", toVersion="evil")),
    )
    name = json.loads(sent.stdout)["metadata"]["name"]

    def answered() -> dict[str, Any] | None:
        status: dict[str, Any] = cluster.json("get", "modelcommand", name, "-n", namespace).get("status", {})
        return status if status.get("handledAt") else None

    answer = wait_until(answered)
    assert answer["outcome"] == "Refused"
    assert answer["result"] == "refused: evil is not in this model's history"
    services = cluster.json("get", "inferenceservices", "-n", namespace)["items"]
    assert [service["metadata"]["name"] for service in services] == ["churn--2024-06-01"]
    assert "evil" not in json.dumps(cluster.json("get", "md", "churn", "-n", namespace)["status"]["history"])


def test_a_command_names_its_sender_as_the_api_server_knows_them(cluster: Kubectl, namespace: str, roles: str) -> None:
    _bind(cluster, namespace, "cam", f"{roles}-command")
    wait_until(lambda: _can(cluster, "cam", namespace, "create", MODEL_COMMANDS))

    posing = cluster.run(
        "create", "-f", "-", "--as=cam", stdin=json.dumps(_command(namespace, "promote", "ada")), check=False
    )
    assert posing.returncode != 0
    assert "spec.requestedBy must be the sender, cam" in posing.stderr

    honest = cluster.run(
        "create", "-o", "json", "-f", "-", "--as=cam", stdin=json.dumps(_command(namespace, "promote", "cam"))
    )
    name = json.loads(honest.stdout)["metadata"]["name"]
    # Once sent, a command is what it was: not even its sender can change what it asks.
    changed = cluster.run(
        "patch",
        "modelcommand",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"action": "abort"}}),
        check=False,
    )
    assert changed.returncode != 0
    assert "a command cannot be changed once sent" in changed.stderr
