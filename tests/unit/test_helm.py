"""Building helm from its Go module: versions, cache paths and the flags that make a release build."""

from __future__ import annotations

from pathlib import Path

import pytest

from steward_harness import binaries, helm

HELM_GO_MOD = """\
module helm.sh/helm/v3

go 1.24.0

require (
\tgithub.com/Masterminds/semver/v3 v3.4.0
\tk8s.io/api v0.34.0
\tk8s.io/client-go v0.34.0
)
"""


class TestVersions:
    @pytest.mark.parametrize("version", ["v3.19.0", "v3.9.12"])
    def test_helm_3_releases_are_accepted(self, version: str) -> None:
        assert helm.check_version(version) == version

    @pytest.mark.parametrize("version", ["3.19.0", "v4.0.0", "v3.19", "v3.19.0-rc.1", "latest", ""])
    def test_anything_else_is_refused_before_go_runs(self, version: str) -> None:
        with pytest.raises(binaries.BuildError, match="not a Helm 3 release version"):
            helm.check_version(version)

    def test_the_default_is_a_helm_3_release(self) -> None:
        assert helm.check_version(helm.HELM_VERSION) == helm.HELM_VERSION


class TestCache:
    def test_helm_is_cached_per_version_beside_the_control_plane(self) -> None:
        assert helm.helm_path("v3.19.0") == binaries.CACHE_DIR / "bin" / "helm-v3.19.0" / "helm"
        assert helm.helm_path("v3.19.0") != helm.helm_path("v3.19.5")

    def test_a_cached_binary_is_reused_without_building(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(binaries, "CACHE_DIR", tmp_path)
        cached = helm.helm_path("v3.19.0")
        cached.parent.mkdir(parents=True)
        cached.touch()

        def refuse(version: str) -> None:
            raise AssertionError(f"rebuilt helm {version}")

        monkeypatch.setattr(helm, "build", refuse)
        assert helm.ensure_helm("v3.19.0") == cached


class TestWrapperModule:
    def test_it_requires_only_helm_at_the_version(self) -> None:
        go_mod = helm.wrapper_go_mod("v3.19.0")
        assert go_mod.startswith("module steward.invalid/helm\n")
        assert "require helm.sh/helm/v3 v3.19.0\n" in go_mod
        assert "replace" not in go_mod


class TestLinkerFlags:
    def test_helm_version_reports_the_release(self) -> None:
        flags = helm.ldflags("v3.19.0", HELM_GO_MOD).split()
        assert "helm.sh/helm/v3/internal/version.version=v3.19.0" in flags
        assert "helm.sh/helm/v3/internal/version.gitTreeState=clean" in flags
        # Unset metadata keeps `helm version` free of a "+unreleased" suffix.
        assert not any("internal/version.metadata" in flag for flag in flags)

    def test_lint_and_template_assume_the_kubernetes_that_client_go_targets(self) -> None:
        flags = helm.ldflags("v3.19.0", HELM_GO_MOD).split()
        for package in ("pkg/lint/rules", "pkg/chartutil"):
            assert f"helm.sh/helm/v3/{package}.k8sVersionMajor=1" in flags
            assert f"helm.sh/helm/v3/{package}.k8sVersionMinor=34" in flags

    def test_binaries_are_stripped(self) -> None:
        assert helm.ldflags("v3.19.0", HELM_GO_MOD).startswith("-s -w ")

    def test_a_go_mod_without_client_go_is_refused(self) -> None:
        with pytest.raises(binaries.BuildError, match=r"k8s\.io/client-go is not required"):
            helm.ldflags("v3.19.0", "module helm.sh/helm/v3\n\ngo 1.24.0\n")

    def test_an_unpublished_client_go_is_refused(self) -> None:
        go_mod = HELM_GO_MOD.replace("k8s.io/client-go v0.34.0", "k8s.io/client-go v1.5.2")
        with pytest.raises(binaries.BuildError, match="not a published"):
            helm.kubernetes_minor(go_mod)
