"""The Helm chart as the real helm sees it: it lints clean, and what it renders a real API server accepts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest
import yaml

from steward_harness import helm as helm_builds
from steward_harness.kubectl import Kubectl
from tests.conftest import REPOSITORY

CHART = REPOSITORY / "charts" / "steward"

Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """The pinned helm (built from the Go module proxy on first use), with its own empty homes so a user's
    repositories and plugins never leak in."""
    binary = helm_builds.ensure_helm()
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *args], env=env, cwd=REPOSITORY, capture_output=True, text=True, timeout=120, check=False
        )

    return run


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
