"""The wrapper module that builds the control plane from the Go module proxy, and which binaries it builds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from steward_harness import binaries

KUBERNETES_GO_MOD = """\
module k8s.io/kubernetes

go 1.24.0

require (
\tgo.etcd.io/etcd/client/v3 v3.6.4
\tgo.etcd.io/etcd/server/v3 v3.6.4 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/kube-openapi => k8s.io/kube-openapi v0.0.0-20250710124328-f3f2b991d03b
)
"""


def test_staging_modules_are_read_from_the_release_go_mod() -> None:
    assert binaries.staging_modules(KUBERNETES_GO_MOD) == ["k8s.io/api", "k8s.io/client-go"]


def test_staging_modules_are_pinned_to_the_published_version() -> None:
    go_mod = binaries.wrapper_go_mod("v1.34.4", KUBERNETES_GO_MOD)
    assert "require k8s.io/kubernetes v1.34.4" in go_mod
    assert "\tk8s.io/api => k8s.io/api v0.34.4\n" in go_mod
    assert "\tk8s.io/client-go => k8s.io/client-go v0.34.4\n" in go_mod
    assert "kube-openapi =>" not in go_mod


def test_etcd_is_built_at_the_version_the_release_requires() -> None:
    assert binaries.required_version(KUBERNETES_GO_MOD, "go.etcd.io/etcd/server/v3") == "v3.6.4"


@pytest.mark.parametrize("version", ["1.34.4", "v2.0.0", "v1.34", "latest"])
def test_only_release_versions_are_accepted(version: str) -> None:
    with pytest.raises(binaries.BuildError, match="not a Kubernetes release version"):
        binaries.staging_version(version)


def test_binaries_are_cached_per_version() -> None:
    assert binaries.binary_path("kube-apiserver", "v1.34.4") != binaries.binary_path("kube-apiserver", "v1.34.3")
    assert binaries.binary_path("kube-apiserver", "v1.34.4").is_relative_to(binaries.CACHE_DIR)


def _cache_holding(*names: str) -> None:
    for name in names:
        binaries.binary_path(name).parent.mkdir(parents=True, exist_ok=True)
        binaries.binary_path(name).write_bytes(b"")


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Sequence[str]]:
    """What ensure_binaries asks to build, against an empty cache in tmp_path, without running go."""
    requested: list[Sequence[str]] = []
    monkeypatch.setattr(binaries, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(binaries, "build", lambda version, names: requested.append(list(names)))
    return requested


def test_a_cache_from_before_the_controller_manager_gains_only_it(builds: list[Sequence[str]]) -> None:
    _cache_holding("kube-apiserver", "etcd")
    paths = binaries.ensure_binaries()
    assert builds == [["kube-controller-manager"]]
    assert paths["kube-controller-manager"] == binaries.binary_path("kube-controller-manager")


def test_an_empty_cache_builds_the_whole_control_plane(builds: list[Sequence[str]]) -> None:
    binaries.ensure_binaries()
    assert builds == [["kube-apiserver", "kube-controller-manager", "etcd"]]


def test_a_full_cache_builds_nothing(builds: list[Sequence[str]]) -> None:
    _cache_holding(*binaries.BINARIES)
    assert set(binaries.ensure_binaries()) == {"kube-apiserver", "kube-controller-manager", "etcd"}
    assert builds == []


def test_the_controller_manager_is_built_like_the_api_server() -> None:
    apiserver, controller_manager, etcd = binaries.compilations(
        ["kube-apiserver", "kube-controller-manager", "etcd"], "v1.34.4", "v3.6.4", "2025-01-01T00:00:00Z"
    )
    assert controller_manager.package == "k8s.io/kubernetes/cmd/kube-controller-manager"
    assert controller_manager.version == apiserver.version == "v1.34.4"
    assert controller_manager.ldflags == apiserver.ldflags
    assert "-X k8s.io/component-base/version.gitVersion=v1.34.4" in controller_manager.ldflags
    assert "-X k8s.io/component-base/version.gitMinor=34" in controller_manager.ldflags
    assert (etcd.package, etcd.version, etcd.ldflags) == ("go.etcd.io/etcd/server/v3", "v3.6.4", "-s -w")


def test_only_the_missing_binaries_are_compiled() -> None:
    plan = binaries.compilations(["kube-controller-manager"], "v1.34.4", "v3.6.4", "2025-01-01T00:00:00Z")
    assert [(step.name, step.package) for step in plan] == [
        ("kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager")
    ]


def test_an_unknown_binary_is_refused_by_name() -> None:
    with pytest.raises(binaries.BuildError, match="not a Kubernetes binary: 'kubectl'"):
        binaries.compilations(["kubectl"], "v1.34.4", "v3.6.4", "2025-01-01T00:00:00Z")


def test_a_node_s_binaries_are_commands_of_the_same_release() -> None:
    plan = binaries.compilations(binaries.NODE_BINARIES, "v1.34.4", "v3.6.4", "2025-01-01T00:00:00Z")
    assert [step.package for step in plan] == [f"k8s.io/kubernetes/cmd/{name}" for name in binaries.NODE_BINARIES]
    assert {step.version for step in plan} == {"v1.34.4"}
