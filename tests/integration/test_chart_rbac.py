"""The chart's RBAC as a real API server enforces it: the operator's ServiceAccount may do exactly what the operator
needs and nothing else, and the real operator, logged in with that ServiceAccount's token alone, serves models and
carries out a command."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from steward_harness.controlplane import ControlPlane
from steward_harness.dataplane import DataPlane
from steward_harness.kubectl import Kubectl
from steward_harness.operators import Operator
from steward_operator.reconciling import CHILD_KINDS
from tests.conftest import CHART, REPOSITORY, Helm
from tests.support.waiting import wait_until

# --- RBAC, as the API server enforces it ------------------------------------------------------------------------------

# (verb, resource, subresource): everything the operator does, and nothing else it could.
_ALLOWED = [
    *((verb, "modeldeployments.steward.dev", "") for verb in ("get", "list", "watch", "patch")),
    *((verb, "modeldeployments.steward.dev", "status") for verb in ("get", "patch", "update")),
    *((verb, "modelcommands.steward.dev", "") for verb in ("get", "list", "watch", "patch")),
    ("patch", "modelcommands.steward.dev", "status"),
    # Every kind of child a serving mode or a traffic provider declares it makes.
    *(
        (verb, f"{kind.plural}.{kind.resource[0]}", "")
        for kind in CHILD_KINDS
        for verb in ("get", "list", "watch", "create", "patch", "delete")
    ),
    # Whether the gateway implements mirroring, read before a shadow is written.
    ("get", "gateways.gateway.networking.k8s.io", ""),
    ("get", "gatewayclasses.gateway.networking.k8s.io", ""),
    *((verb, "jobs.batch", "") for verb in ("get", "list", "create", "patch")),
    # A batch challenger's runs, read from their pods' termination messages.
    ("list", "pods", ""),
    *((verb, resource, "") for resource in ("events", "events.events.k8s.io") for verb in ("create", "patch")),
]
_DENIED = [
    ("get", "secrets", ""),
    ("list", "secrets", ""),
    ("get", "configmaps", ""),
    ("get", "pods", ""),
    ("watch", "pods", ""),
    ("create", "pods", ""),
    ("get", "pods", "log"),
    ("create", "deployments.apps", ""),
    ("create", "modeldeployments.steward.dev", ""),
    ("update", "modeldeployments.steward.dev", ""),
    ("delete", "modeldeployments.steward.dev", ""),
    ("create", "modelcommands.steward.dev", ""),
    ("delete", "modelcommands.steward.dev", ""),
    ("update", "inferenceservices.serving.kserve.io", ""),
    ("delete", "jobs.batch", ""),
    ("list", "events", ""),
    ("get", "namespaces", ""),
    ("create", "clusterroles.rbac.authorization.k8s.io", ""),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("*", "*", ""),
]


def test_the_operator_may_do_exactly_what_it_needs(helm: Helm, cluster: Kubectl, namespace: str) -> None:
    # The ClusterRole and its binding are named after the release and its namespace, so tests never collide.
    result = helm("template", "steward", str(CHART), "--skip-crds", "--skip-tests", "--namespace", namespace)
    assert result.returncode == 0, result.stderr
    manifests = result.stdout
    try:
        cluster.run("apply", "-n", namespace, "-f", "-", stdin=manifests)
        role = cluster.json("get", "clusterrole", f"steward-{namespace}")
        rules = {
            (group, resource): sorted(rule["verbs"])
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
        }
        assert rules == {
            ("steward.dev", "modeldeployments"): ["get", "list", "patch", "watch"],
            ("steward.dev", "modeldeployments/status"): ["get", "patch", "update"],
            ("steward.dev", "modelcommands"): ["get", "list", "patch", "watch"],
            ("steward.dev", "modelcommands/status"): ["patch"],
            # Every kind of child a serving mode or a traffic provider declares it makes, and nothing more.
            **{
                (kind.resource[0], kind.plural): ["create", "delete", "get", "list", "patch", "watch"]
                for kind in CHILD_KINDS
            },
            ("gateway.networking.k8s.io", "gateways"): ["get"],
            ("gateway.networking.k8s.io", "gatewayclasses"): ["get"],
            ("batch", "jobs"): ["create", "get", "list", "patch"],
            ("discovery.k8s.io", "endpointslices"): ["list"],
            ("", "pods"): ["list"],
            ("", "events"): ["create", "patch"],
            ("events.k8s.io", "events"): ["create", "patch"],
        }

        account = f"system:serviceaccount:{namespace}:steward"
        wrong: list[str] = []
        for expected, checks in ((True, _ALLOWED), (False, _DENIED)):
            for verb, resource, subresource in checks:
                # In the release's namespace, in another one, and across all of them (the operator's watch).
                for scope in (("-n", namespace), ("-n", "default"), ("--all-namespaces",)):
                    arguments = ["auth", "can-i", verb, resource, f"--as={account}", *scope]
                    if subresource:
                        arguments.append(f"--subresource={subresource}")
                    answer = cluster.run(*arguments, check=False)
                    allowed = answer.stdout.strip() == "yes"
                    assert answer.stdout.strip() in {"yes", "no"}, answer.stdout + answer.stderr
                    if allowed is not expected:
                        wrong.append(f"{' '.join(arguments[2:])}: {answer.stdout.strip()}")
        assert not wrong, "\n".join(wrong)
    finally:
        cluster.run("delete", "--ignore-not-found", "--wait=false", "-n", namespace, "-f", "-", stdin=manifests)


def test_the_operator_runs_on_the_charts_rbac_alone(
    helm: Helm, cluster: Kubectl, control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """The real operator, logged in with a token of the chart's ServiceAccount, serves an online and a batch
    model and carries out a command: the ClusterRole holds everything the operator does."""
    result = helm(
        "template",
        "steward",
        str(CHART),
        "--skip-crds",
        "--skip-tests",
        "--namespace",
        namespace,
        "--set",
        f"watchNamespaces={{{namespace}}}",
    )
    assert result.returncode == 0, result.stderr
    manifests = result.stdout
    plane = DataPlane(control_plane.server, control_plane.ssl_context(), prefix=namespace).start()
    operator = None
    try:
        cluster.run("apply", "-n", namespace, "-f", "-", stdin=manifests)
        token = cluster.run("create", "token", "steward", "-n", namespace, "--duration=1h").stdout.strip()
        config = yaml.safe_load(control_plane.kubeconfig.read_text())
        config["users"] = [{"name": "steward-admin", "user": {"token": token}}]
        kubeconfig = tmp_path / "operator-kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        operator = Operator(kubeconfig, [namespace]).start()
        for example in ("online.yaml", "batch.yaml"):
            cluster.run("apply", "-n", namespace, "-f", str(REPOSITORY / "examples" / example))

        def phase(name: str) -> str | None:
            found: str | None = cluster.json("get", "md", name, "-n", namespace).get("status", {}).get("phase")
            return found

        wait_until(lambda: phase("churn") == phase("credit-limits") == "Stable")
        cluster.run(
            "patch",
            "md",
            "churn",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec":{"model":{"version":"v2","bundle":"s3://models/churn/v2/"}}}',
        )
        wait_until(lambda: phase("churn") == "Validating")
        command = {
            "apiVersion": "steward.dev/v1alpha1",
            "kind": "ModelCommand",
            "metadata": {"name": "churn-promote", "namespace": namespace},
            "spec": {"modelDeployment": "churn", "action": "promote", "requestedBy": "steward-admin"},
        }
        cluster.run("apply", "-f", "-", stdin=json.dumps(command))
        wait_until(lambda: phase("churn") == "Canary")
        answered = cluster.json("get", "modelcommand", "churn-promote", "-n", namespace)
        assert answered["status"]["outcome"] == "Done"
        # A batch release reads its challenger's Jobs and their pods: with no run yet, it holds; it would pause,
        # saying why, if it could not read them.
        bundle = '{"spec":{"model":{"version":"v13","bundle":"s3://models/credit-limits/v13/"}}}'
        cluster.run("patch", "md", "credit-limits", "-n", namespace, "--type=merge", "-p", bundle)

        def analysed() -> str | None:
            status = cluster.json("get", "md", "credit-limits", "-n", namespace).get("status", {})
            decision: str | None = (status.get("lastAnalysis") or {}).get("decision")
            return decision if status.get("phase") == "Validating" else None

        assert wait_until(analysed) == "hold"
        assert answered["metadata"]["ownerReferences"][0]["name"] == "churn"
        assert "Forbidden" not in operator.log.read_text()
    finally:
        if operator is not None:
            operator.stop()
        plane.stop()
        cluster.run("delete", "--ignore-not-found", "--wait=false", "-n", namespace, "-f", "-", stdin=manifests)
