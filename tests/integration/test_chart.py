"""The Helm chart as the real helm sees it: it lints clean, its values are documented and checked, a real API
server accepts what it renders, and the operator's ServiceAccount may do exactly what the operator needs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from steward_harness import helm as helm_builds
from steward_harness.controlplane import ControlPlane
from steward_harness.dataplane import DataPlane
from steward_harness.kubectl import Kubectl
from steward_harness.operators import Operator
from steward_operator.reconciling import CHILD_KINDS
from tests.conftest import CHART, REPOSITORY, Helm
from tests.support.waiting import wait_until


def _rendered(helm: Helm, namespace: str) -> str:
    result = helm("template", "steward", str(CHART), "--include-crds", "--namespace", namespace)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _documents(helm: Helm, *args: str, component: str = "operator") -> dict[str, dict[str, Any]]:
    """`helm template` with `args` (values, --show-only ...), as {kind: object} for one component (operator or
    monitor); each has one object of each kind."""
    result = helm("template", "steward", str(CHART), "--skip-crds", "--namespace", "steward-system", *args)
    assert result.returncode == 0, result.stderr
    documents = [
        document
        for document in yaml.safe_load_all(result.stdout)
        if document and document["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    kinds = [document["kind"] for document in documents]
    assert len(kinds) == len(set(kinds)), kinds
    return {document["kind"]: document for document in documents}


def _environment(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {variable["name"]: variable["value"] for variable in container["env"]}


def test_helm_is_the_pinned_release(helm: Helm) -> None:
    result = helm("version", "--template", "{{.Version}}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == helm_builds.HELM_VERSION


def test_lint_finds_nothing_to_warn_about(helm: Helm) -> None:
    # --strict turns warnings into failures; informational notes (such as a missing icon) stay allowed.
    result = helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


def test_every_crd_in_the_chart_is_rendered(helm: Helm, namespace: str) -> None:
    documents = [document for document in yaml.safe_load_all(_rendered(helm, namespace)) if document]
    rendered = {
        document["metadata"]["name"] for document in documents if document["kind"] == "CustomResourceDefinition"
    }
    shipped = {yaml.safe_load(path.read_text())["metadata"]["name"] for path in (CHART / "crds").glob("*.yaml")}
    assert shipped
    assert rendered == shipped


def test_the_api_server_accepts_what_the_chart_renders(helm: Helm, kubectl: Kubectl, namespace: str) -> None:
    manifests = _rendered(helm, namespace)
    result = kubectl.run("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=manifests)
    applied = result.stdout.splitlines()
    assert applied
    assert all(line.endswith("(server dry run)") for line in applied), result.stdout
    assert any(
        line.startswith("customresourcedefinition.apiextensions.k8s.io/modeldeployments.steward.dev")
        for line in applied
    )


def test_the_chart_demands_a_supported_kubernetes(helm: Helm, namespace: str) -> None:
    result = helm("template", "steward", str(CHART), "--kube-version", "1.29.0", "--namespace", namespace)
    assert result.returncode != 0
    assert "incompatible with Kubernetes v1.29.0" in result.stderr


# --- values: documented, and checked by the schema --------------------------------------------------------------------

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*):(?:\s|$)")


def _documented_keys(values_yaml: str) -> dict[tuple[str, ...], bool]:
    """Every key of values.yaml by its path, and whether a helm-docs comment (`# -- ...`) sits right above it."""
    keys: dict[tuple[str, ...], bool] = {}
    parents: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in values_yaml.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = _KEY.match(line)
        if match is not None:
            indent = len(match["indent"])
            while parents and parents[-1][0] >= indent:
                parents.pop()
            path = (*(key for _, key in parents), match["key"])
            keys[path] = bool(comment) and comment[0].startswith("# -- ")
            parents.append((indent, match["key"]))
        # A blank line (or anything else) ends a comment: helm-docs reads only the block right above a key.
        comment = []
    return keys


def _leaves(values: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path


def test_every_value_carries_a_helm_docs_comment() -> None:
    text = (CHART / "values.yaml").read_text()
    documented = _documented_keys(text)
    leaves = list(_leaves(yaml.safe_load(text)))
    assert leaves
    for leaf in leaves:
        assert leaf in documented, leaf
        # A value is documented on its own line, or as a whole on the map that holds it (resources).
        assert any(documented[leaf[:depth]] for depth in range(1, len(leaf) + 1)), ".".join(leaf)


def test_the_schema_covers_every_value_and_nothing_else() -> None:
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(values)


def test_lint_accepts_values_other_than_the_defaults(helm: Helm) -> None:
    result = helm(
        "lint",
        "--strict",
        str(CHART),
        "--set",
        "watchNamespaces={team-a,team-b},resyncSeconds=30,metrics.port=9100,serviceAccount.create=false",
        "--set",
        "serviceAccount.name=steward,priorityClassName=system-cluster-critical,nodeSelector.pool=system",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ERROR]" not in result.stdout


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        (("--set", "resyncSeconds=-1"), "at '/resyncSeconds': minimum"),
        (("--set", "resyncSeconds=1.5"), "at '/resyncSeconds'"),
        (("--set-string", "metrics.port=http"), "at '/metrics/port': got string, want integer"),
        (("--set", "health.port=70000"), "at '/health/port': maximum"),
        (("--set", "replicaCount=2"), "additional properties 'replicaCount' not allowed"),
        (("--set", "image.pullPolicy=Sometimes"), "at '/image/pullPolicy'"),
        (("--set", "watchNamespaces={Team_A}"), "at '/watchNamespaces/0'"),
        (("--set", "resources.limits.memory=lots"), "at '/resources/limits/memory'"),
        (("--set", "serviceAccount.create=maybe"), "at '/serviceAccount/create'"),
        (("--set", "prometheus.url=prometheus:9090"), "at '/prometheus/url'"),
        (("--set", "monitor.tokenSecret=Monitor_Token"), "at '/monitor/tokenSecret'"),
        (("--set", "monitor.retentionDays=0"), "at '/monitor/retentionDays'"),
    ],
    ids=lambda value: value[-1] if isinstance(value, tuple) else None,
)
def test_the_schema_refuses_a_bad_value(helm: Helm, values: tuple[str, ...], complaint: str) -> None:
    result = helm("template", "steward", str(CHART), *values)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr


def test_metrics_and_health_must_not_share_a_port(helm: Helm) -> None:
    result = helm("template", "steward", str(CHART), "--set", "health.port=9090")
    assert result.returncode != 0
    assert "metrics.port and health.port must differ" in result.stderr


# --- what the chart renders -------------------------------------------------------------------------------------------


def test_the_operator_runs_once_non_root_on_a_read_only_file_system(helm: Helm) -> None:
    deployment = _documents(helm)["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["name"] == "operator"
    assert container["image"] == "ghcr.io/steward-dev/operator:0.1.0"
    assert container["command"] == ["steward-operator"]
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    # The only writable path is an emptyDir at /tmp; the monitor's ingest key is mounted read-only.
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert set(mounts) == {"/tmp", "/var/run/steward-ingest"}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/var/run/steward-ingest"]["readOnly"] is True
    assert volumes[mounts["/var/run/steward-ingest"]["name"]]["secret"]["secretName"] == "steward-monitor-ingest-key"
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}


def test_the_probes_call_healthz_on_the_health_port(helm: Helm) -> None:
    deployment = _documents(helm, "--set", "health.port=8181")["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 9090, "health": 8181}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert _environment(deployment)["STEWARD_HEALTH_PORT"] == "8181"


def test_the_operator_is_configured_through_its_environment(helm: Helm) -> None:
    assert _environment(_documents(helm)["Deployment"]) == {
        "STEWARD_PREDICTOR_IMAGE": "ghcr.io/steward-dev/predictor:0.1.0",
        "STEWARD_NAMESPACES": "",
        "STEWARD_RESYNC_SECONDS": "60",
        "STEWARD_PROMETHEUS_URL": "http://prometheus-operated.monitoring.svc:9090",
        "STEWARD_MONITOR_URL": "http://steward-monitor.steward-system.svc:8080",
        "STEWARD_MONITOR_INGEST_KEY_FILE": "/var/run/steward-ingest/ingest-key",
        "STEWARD_METRICS_PORT": "9090",
        "STEWARD_HEALTH_PORT": "8081",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    environment = _environment(
        _documents(
            helm,
            "--set",
            "watchNamespaces={team-a,team-b},resyncSeconds=15,predictorImage.tag=2.0.0,prometheus.url=",
            "--set",
            "monitor.enabled=false",
        )["Deployment"]
    )
    assert environment["STEWARD_PROMETHEUS_URL"] == ""  # Commands only.
    assert environment["STEWARD_MONITOR_URL"] == ""  # No monitor: predictions are not reported.
    assert "STEWARD_MONITOR_INGEST_KEY_FILE" not in environment
    assert environment["STEWARD_NAMESPACES"] == "team-a,team-b"
    assert environment["STEWARD_RESYNC_SECONDS"] == "15"
    assert environment["STEWARD_PREDICTOR_IMAGE"] == "ghcr.io/steward-dev/predictor:2.0.0"


def test_the_service_exposes_the_metrics_port_inside_the_cluster(helm: Helm) -> None:
    documents = _documents(helm, "--set", "metrics.port=9100")
    service = documents["Service"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}]
    # The Service selects the operator's pod and nothing else (not the `helm test` pod, not the monitor's).
    pod_labels = documents["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    others = [
        _documents(helm, component="test")["Pod"]["metadata"]["labels"],
        _documents(helm, component="monitor")["Deployment"]["spec"]["template"]["metadata"]["labels"],
    ]
    assert not any(service["spec"]["selector"].items() <= labels.items() for labels in others)


def test_extra_pod_labels_never_replace_the_ones_the_selector_needs(helm: Helm) -> None:
    deployment = _documents(helm, "--set", "podLabels.team=ml,podLabels.app\\.kubernetes\\.io/name=other")["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "ml"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_an_existing_service_account_can_be_named(helm: Helm) -> None:
    documents = _documents(helm, "--set", "serviceAccount.create=false,serviceAccount.name=operators")
    assert "ServiceAccount" not in documents
    assert documents["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == "operators"
    (subject,) = documents["ClusterRoleBinding"]["subjects"]
    assert subject == {"kind": "ServiceAccount", "name": "operators", "namespace": "steward-system"}


# --- helm test --------------------------------------------------------------------------------------------------------


def _test_pod(helm: Helm) -> dict[str, Any]:
    return _documents(helm, "--show-only", "templates/tests/test-metrics.yaml", component="test")["Pod"]


def test_helm_test_checks_the_metrics_from_the_operator_image(helm: Helm) -> None:
    pod = _test_pod(helm)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/steward-dev/operator:0.1.0"
    assert container["command"] == ["python", "-c"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    environment = {variable["name"]: variable["value"] for variable in container["env"]}
    assert environment["METRICS_URL"] == "http://steward.steward-system.svc:9090/metrics"


@pytest.mark.parametrize(
    ("exposition", "passes"),
    [
        (b"# TYPE steward_operator_reconciles_total counter\nsteward_operator_reconciles_total 3\n", True),
        (b"# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 0.5\n", False),
    ],
    ids=["operator-metrics", "other-metrics"],
)
def test_the_helm_test_script_passes_only_on_the_operators_metrics(helm: Helm, exposition: bytes, passes: bool) -> None:
    """Run the test pod's own script against a real HTTP server standing in for the operator's Service."""
    (container,) = _test_pod(helm)["spec"]["containers"]
    (script,) = container["args"]

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(exposition)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        result = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "METRICS_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert (result.returncode == 0) is passes, result.stdout + result.stderr


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
    *((verb, resource, "") for resource in ("events", "events.events.k8s.io") for verb in ("create", "patch")),
]
_DENIED = [
    ("get", "secrets", ""),
    ("list", "secrets", ""),
    ("get", "configmaps", ""),
    ("get", "pods", ""),
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
            ("serving.kserve.io", "inferenceservices"): ["create", "delete", "get", "list", "patch", "watch"],
            ("gateway.networking.k8s.io", "httproutes"): ["create", "delete", "get", "list", "patch", "watch"],
            ("networking.istio.io", "virtualservices"): ["create", "delete", "get", "list", "patch", "watch"],
            ("traefik.io", "traefikservices"): ["create", "delete", "get", "list", "patch", "watch"],
            ("traefik.io", "ingressroutes"): ["create", "delete", "get", "list", "patch", "watch"],
            ("gateway.networking.k8s.io", "gateways"): ["get"],
            ("gateway.networking.k8s.io", "gatewayclasses"): ["get"],
            ("batch", "cronjobs"): ["create", "delete", "get", "list", "patch", "watch"],
            ("batch", "jobs"): ["create", "get", "list", "patch"],
            ("discovery.k8s.io", "endpointslices"): ["list"],
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
        assert answered["metadata"]["ownerReferences"][0]["name"] == "churn"
        assert "Forbidden" not in operator.log.read_text()
    finally:
        if operator is not None:
            operator.stop()
        plane.stop()
        cluster.run("delete", "--ignore-not-found", "--wait=false", "-n", namespace, "-f", "-", stdin=manifests)


# --- the monitor ---------------------------------------------------------------------------------------------------


def test_the_monitor_keeps_its_sqlite_store_on_a_volume_and_needs_no_api_access(helm: Helm) -> None:
    documents = _documents(helm, component="monitor")
    assert set(documents) == {"Deployment", "Service", "PersistentVolumeClaim", "Secret"}
    deployment = documents["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "monitor"
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/steward-dev/monitor:0.1.0"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    environment = {variable["name"]: variable.get("value") for variable in container["env"]}
    assert environment["STEWARD_MONITOR_STORE"] == "sqlite:////data/steward-monitor.db"
    assert environment["STEWARD_MONITOR_RETENTION_DAYS"] == "180"
    assert environment["STEWARD_MONITOR_PROMETHEUS_URL"] == "http://prometheus-operated.monitoring.svc:9090"
    assert environment["STEWARD_MONITOR_DRIFT_WINDOW_SECONDS"] == "3600"
    assert "STEWARD_MONITOR_TOKEN_FILE" not in environment  # No token: outcomes are refused.
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/tmp", "/data", "/var/run/steward-ingest"}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "steward-monitor"
    claim = documents["PersistentVolumeClaim"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert pod["securityContext"]["fsGroup"] == 10001  # The volume is writable by the monitor's user.
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert documents["Service"]["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]


def test_the_monitor_stores_in_postgresql_and_takes_its_token_from_secrets(helm: Helm) -> None:
    documents = _documents(
        helm, "--set", "monitor.storeUrlSecret.name=monitor-db,monitor.tokenSecret=monitor-token", component="monitor"
    )
    assert set(documents) == {"Deployment", "Service", "Secret"}  # No claim: the data is in PostgreSQL.
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    environment = {variable["name"]: variable for variable in container["env"]}
    assert environment["STEWARD_MONITOR_STORE"]["valueFrom"] == {"secretKeyRef": {"name": "monitor-db", "key": "url"}}
    assert environment["STEWARD_MONITOR_TOKEN_FILE"]["value"] == "/var/run/steward/token"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["token"]["secret"] == {"secretName": "monitor-token", "items": [{"key": "token", "path": "token"}]}
    assert "data" not in volumes


def test_the_monitor_can_be_left_out(helm: Helm) -> None:
    result = helm("template", "steward", str(CHART), "--skip-crds", "--set", "monitor.enabled=false")
    assert result.returncode == 0, result.stderr
    assert "component: monitor" not in result.stdout


# --- NOTES.txt --------------------------------------------------------------------------------------------------------


def _notes(helm: Helm, kubectl: Kubectl, namespace: str, values: str) -> str:
    """The NOTES.txt a server-side dry-run install with `values` prints."""
    result = helm(
        "install",
        "steward",
        str(CHART),
        "--dry-run=server",
        "--skip-crds",
        f"--kubeconfig={kubectl.kubeconfig}",
        "--namespace",
        namespace,
        "--set",
        values,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_the_install_notes_say_how_to_check_and_use_the_operator(helm: Helm, kubectl: Kubectl, namespace: str) -> None:
    notes = _notes(helm, kubectl, namespace, "watchNamespaces={team-a}")
    assert "ModelDeployments in these namespaces: team-a" in notes
    assert f"kubectl -n {namespace} rollout status deployment/steward" in notes
    assert f"helm test steward -n {namespace}" in notes
    assert "kubectl apply -n NAMESPACE -f examples/online.yaml" in notes
    assert "kubectl steward status NAME" in notes
    assert f"http://steward.{namespace}.svc:9090/metrics" in notes
    assert "evidence read from Prometheus at http://prometheus-operated.monitoring.svc:9090" in notes
    assert f"http://steward-monitor.{namespace}.svc:8080" in notes
    assert "refused until monitor.tokenSecret names a Secret with the bearer token" in notes
    assert "SQLite on PersistentVolumeClaim steward-monitor (kept on uninstall)" in notes


def test_the_install_notes_say_when_releases_wait_for_commands(helm: Helm, kubectl: Kubectl, namespace: str) -> None:
    notes = _notes(helm, kubectl, namespace, "prometheus.url=")
    assert "releases move only on `kubectl steward` commands" in notes


# --- alerts and dashboards ------------------------------------------------------------------------------------------

RULES = CHART / "files" / "rules.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"


def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "steward_test.yaml"],
        cwd=REPOSITORY / "tests" / "rules",
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_rules_ship_as_a_prometheus_rule_where_the_operator_kind_exists(helm: Helm) -> None:
    assert "PrometheusRule" not in _documents(helm)
    documents = _documents(
        helm, "--api-versions", "monitoring.coreos.com/v1/PrometheusRule", "--set", "alerts.labels.release=kps"
    )
    rule = documents["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert "PrometheusRule" not in _documents(
        helm, "--api-versions", "monitoring.coreos.com/v1/PrometheusRule", "--set", "alerts.enabled=false"
    )


def test_the_dashboard_ships_as_a_configmap_grafana_picks_up(helm: Helm) -> None:
    config_map = _documents(helm)["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["steward-model.json"])
    assert dashboard == json.loads(DASHBOARD.read_text())
    assert {variable["name"] for variable in dashboard["templating"]["list"]} >= {"namespace", "model", "version"}
    assert "ConfigMap" not in _documents(helm, "--set", "dashboards.enabled=false")


def test_the_argo_cd_health_check_ships_under_argocd_cms_key_when_asked(helm: Helm) -> None:
    assert _documents(helm, component="gitops") == {}
    config_map = _documents(helm, "--set", "argocd.healthCheck.configMap=true", component="gitops")["ConfigMap"]
    script = config_map["data"]["resource.customizations.health.steward.dev_ModelDeployment"]
    assert script == (CHART / "files" / "argocd-health.lua").read_text().rstrip("\n")
