"""The chart's side of the monitor's intake, as the real helm renders it: the ingest key the monitor checks predictor
tokens with lives in a Secret the chart generates once and keeps across upgrades (or one the user names), mounted
into the monitor; the monitor's limits are values."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
import yaml

from steward_harness.kubectl import Kubectl
from tests.conftest import CHART, Helm

GENERATED = "steward-monitor-ingest-key"
"""The Secret the chart generates for the ingest key of release `steward`."""


def _monitor(helm: Helm, *values: str) -> dict[str, dict[str, Any]]:
    """The monitor's objects as `helm template` renders them with `values`, by kind."""
    result = helm("template", "steward", str(CHART), "--skip-crds", "--namespace", "steward-system", *values)
    assert result.returncode == 0, result.stderr
    documents = [
        document
        for document in yaml.safe_load_all(result.stdout)
        if document and document["metadata"]["labels"]["app.kubernetes.io/component"] == "monitor"
    ]
    return {document["kind"]: document for document in documents}


def _container(deployment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The monitor container's environment, mounts and the pod's volumes, each by name."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return (
        {variable["name"]: variable.get("value") for variable in container["env"]},
        {mount["name"]: mount for mount in container["volumeMounts"]},
        {volume["name"]: volume for volume in pod["volumes"]},
    )


def test_the_chart_generates_the_ingest_key_and_mounts_it_into_the_monitor(helm: Helm) -> None:
    objects = _monitor(helm)
    secret = objects["Secret"]
    assert secret["metadata"]["name"] == GENERATED
    key = base64.b64decode(secret["data"]["ingest-key"]).decode()
    assert len(key) == 48
    assert key.isalnum()
    environment, mounts, volumes = _container(objects["Deployment"])
    assert environment["STEWARD_MONITOR_INGEST_KEY_FILE"] == "/var/run/steward-ingest/ingest-key"
    assert mounts["ingest-key"] == {"name": "ingest-key", "mountPath": "/var/run/steward-ingest", "readOnly": True}
    assert volumes["ingest-key"]["secret"] == {
        "secretName": GENERATED,
        "items": [{"key": "ingest-key", "path": "ingest-key"}],
    }
    assert "STEWARD_MONITOR_ACCEPT_UNAUTHENTICATED_EVENTS" not in environment  # Refused unless asked for.
    assert (
        environment["STEWARD_MONITOR_MAX_RECORDS"],
        environment["STEWARD_MONITOR_MAX_CLOCK_SKEW_SECONDS"],
        environment["STEWARD_MONITOR_MAX_EXPORTED_VERSIONS"],
    ) == ("100000", "300", "500")


def test_a_named_secret_replaces_the_generated_one(helm: Helm) -> None:
    values = "monitor.ingestKeySecret=team-ingest-key,monitor.acceptUnauthenticatedEvents=true"
    objects = _monitor(helm, "--set", values, "--set", "monitor.maxRecords=2000000")
    assert "Secret" not in objects
    environment, _, volumes = _container(objects["Deployment"])
    assert volumes["ingest-key"]["secret"]["secretName"] == "team-ingest-key"
    assert environment["STEWARD_MONITOR_ACCEPT_UNAUTHENTICATED_EVENTS"] == "true"
    assert environment["STEWARD_MONITOR_MAX_RECORDS"] == "2000000"  # Not 2e+06.
    assert _monitor(helm, "--set", "monitor.enabled=false") == {}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ("monitor.maxRecords=100", "at '/monitor/maxRecords': minimum"),
        ("monitor.maxExportedVersions=0", "at '/monitor/maxExportedVersions': minimum"),
        ("monitor.maxClockSkewSeconds=-1", "at '/monitor/maxClockSkewSeconds': minimum"),
        ("monitor.ingestKeySecret=Team_Key", "at '/monitor/ingestKeySecret'"),
    ],
)
def test_the_schema_refuses_a_bad_limit(helm: Helm, values: str, complaint: str) -> None:
    result = helm("template", "steward", str(CHART), "--set", values)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_the_generated_key_is_kept_across_upgrades_and_named_in_the_notes(
    helm: Helm, kubectl: Kubectl, namespace: str
) -> None:
    release = f"s{uuid.uuid4().hex[:8]}"
    secret = f"{release}-steward-monitor-ingest-key"
    where = ["--namespace", namespace, "--kubeconfig", str(kubectl.kubeconfig), "--skip-crds"]
    installed = helm("install", release, str(CHART), *where)
    try:
        assert installed.returncode == 0, installed.stderr
        assert f"key ingest-key of Secret\n   {secret} (generated, kept across upgrades)" in installed.stdout
        first = kubectl.json("get", "secret", secret, "-n", namespace)["data"]["ingest-key"]
        upgraded = helm("upgrade", release, str(CHART), *where, "--set", "monitor.retentionDays=90")
        assert upgraded.returncode == 0, upgraded.stderr
        assert kubectl.json("get", "secret", secret, "-n", namespace)["data"]["ingest-key"] == first
    finally:
        helm("uninstall", release, "--namespace", namespace, "--kubeconfig", str(kubectl.kubeconfig))
