"""The CRDs in crds/ are exactly what the models render, document every field, and the chart carries a copy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from steward_operator import crds
from tests.conftest import CRDS, REPOSITORY

RESOURCES = pytest.mark.parametrize("resource", crds.RESOURCES, ids=lambda resource: resource.kind)


def _schema(resource: crds.Resource = crds.MODEL_DEPLOYMENTS) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / resource.file).read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def _properties(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from _properties(child, f"{path}.{name}")
    if "items" in node:
        yield from _properties(node["items"], f"{path}[]")


def test_crds_holds_exactly_steward_s_kinds() -> None:
    assert sorted(path.name for path in CRDS.glob("*.yaml")) == sorted(resource.file for resource in crds.RESOURCES)


@RESOURCES
def test_committed_crd_is_what_the_models_render(resource: crds.Resource) -> None:
    committed = (CRDS / resource.file).read_text()
    assert committed == crds.render(resource), "crds/ is stale: run `make crds` and commit the result"


@RESOURCES
def test_chart_carries_an_identical_copy(resource: crds.Resource) -> None:
    copy = REPOSITORY / "charts" / "steward" / "crds" / resource.file
    assert copy.read_text() == (CRDS / resource.file).read_text(), "run `make crds` to refresh the chart's copy"


@RESOURCES
def test_every_spec_and_status_field_is_described(resource: crds.Resource) -> None:
    undocumented = [
        path
        for path, node in _properties(_schema(resource))
        if path.startswith((".spec", ".status")) and not node.get("description")
    ]
    assert undocumented == []


@RESOURCES
def test_every_field_has_a_type(resource: crds.Resource) -> None:
    untyped = [path for path, node in _properties(_schema(resource)) if "type" not in node]
    assert untyped == []


def test_defaults_satisfy_their_own_schema_keywords() -> None:
    # The API server refuses a CRD whose defaults break its own rules; catch it before a cluster does.
    schema = _schema()["properties"]["spec"]
    rollout_default = schema["properties"]["rollout"]["default"]
    assert rollout_default["canary"]["steps"] == sorted(set(rollout_default["canary"]["steps"]))
    drift = schema["properties"]["monitoring"]["default"]["drift"]
    assert drift["warn"] < drift["alert"]


@RESOURCES
def test_status_carries_no_server_side_defaults(resource: crds.Resource) -> None:
    status = _schema(resource)["properties"]["status"]
    assert not any("default" in node for _, node in _properties(status))


def test_printer_columns() -> None:
    crd = yaml.safe_load((CRDS / crds.CRD_FILE).read_text())
    columns = [column["name"] for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:4] == ["Phase", "Incumbent", "Challenger", "Weight"]
    assert columns[-1] == "Age"
