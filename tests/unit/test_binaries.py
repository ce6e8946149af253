"""The wrapper module that builds kube-apiserver from the Go module proxy."""

from __future__ import annotations

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
    assert binaries.kube_apiserver_path("v1.34.4") != binaries.kube_apiserver_path("v1.34.3")
    assert binaries.kube_apiserver_path("v1.34.4").is_relative_to(binaries.CACHE_DIR)
