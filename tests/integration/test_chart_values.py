"""The Helm chart as the real helm sees it: the pinned helm lints it clean, a real API server accepts what it renders,
it demands a supported Kubernetes, and its values are documented and checked by its schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from steward_harness import helm as helm_builds
from steward_harness.kubectl import Kubectl
from tests.conftest import CHART, Helm


def _rendered(helm: Helm, namespace: str) -> str:
    result = helm("template", "steward", str(CHART), "--include-crds", "--namespace", namespace)
    assert result.returncode == 0, result.stderr
    return result.stdout


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
