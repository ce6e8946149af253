"""The typed view of a ModelDeployment: parsing, defaults and durations."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from steward_operator import specs
from tests.conftest import EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_parses(path: Path) -> None:
    resource = specs.ModelDeployment.model_validate(yaml.safe_load(path.read_text()))
    assert resource.spec.owner.runbook.startswith("https://")


def test_defaults_fill_an_owner_and_model_only_manifest() -> None:
    spec = specs.ModelDeploymentSpec.model_validate(
        {
            "owner": {"team": "t", "contact": "c", "runbook": "https://r"},
            "model": {"version": "v1", "bundle": "s3://b/v1"},
        }
    )
    assert spec.serving.mode == "online"
    assert spec.rollout.traffic.provider == "gateway-api"
    assert spec.rollout.canary.steps == [5, 25, 50]
    assert [guardrail.name for guardrail in spec.rollout.guardrails] == ["errorRate", "slowRequests"]
    assert spec.rollout.shadow is None
    assert spec.retraining is None


def test_camel_case_on_the_wire_snake_case_in_code() -> None:
    online = specs.OnlineServing.model_validate({"minReplicas": 2, "maxReplicas": 4})
    assert online.min_replicas == 2
    assert online.model_dump(by_alias=True)["maxReplicas"] == 4


def test_models_are_frozen() -> None:
    owner = specs.Owner(team="t", contact="c", runbook="https://r")
    with pytest.raises(ValidationError):
        owner.team = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("168h", timedelta(days=7)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert specs.as_timedelta(text) == expected


@pytest.mark.parametrize("text", ["", "5", "1d", "h", "-5m", "5 m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        specs.seconds(text)
