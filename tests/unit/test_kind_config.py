"""kind-config.yaml cannot run here; keep what it pins in step with what the local tests run."""

from __future__ import annotations

import yaml

from steward_harness import binaries
from tests.conftest import REPOSITORY


def test_kind_nodes_run_the_tested_minor_release() -> None:
    config = yaml.safe_load((REPOSITORY / "kind-config.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    tested_minor = binaries.KUBERNETES_VERSION.rsplit(".", 1)[0]
    for node in config["nodes"]:
        image, _, tag = node["image"].partition(":")
        assert image == "kindest/node"
        assert tag.rsplit(".", 1)[0] == tested_minor
