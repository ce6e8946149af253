"""What the Helm chart renders, as the real helm renders it: the operator's Deployment, Service and ServiceAccount, the
`helm test` pod and its script, the monitor and its store, the install notes, and the alert rules, dashboard and Argo
CD health check it ships."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from steward_harness.kubectl import Kubectl
from tests.conftest import CHART, REPOSITORY, Helm


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
