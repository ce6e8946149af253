"""Serving modes as plug-ins: one module per mode behind a factory, each laying out its release stages through the one
layout the release machinery and the decision engine share."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from typing import get_args

import pytest
import yaml

from steward_operator import deciding, modes, planners, releases, specs, traffic
from steward_operator.guardrails import GUARDRAILS
from steward_operator.reconciling import CHILD_KINDS, kind_of
from steward_operator.stages import LiveStage, live
from tests.conftest import REPOSITORY

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _spec(example: str) -> specs.ModelDeploymentSpec:
    manifest = yaml.safe_load((REPOSITORY / "examples" / example).read_text())
    return specs.ModelDeploymentSpec.model_validate(manifest["spec"])


def test_a_mode_with_no_module_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(modes._MODES, "streaming")  # As an operator built without the streaming module.
    assert modes.mode("streaming") is None
    assert modes.unsupported("streaming") == ("StreamingNotSupported", "streaming serving is not supported yet")
    with pytest.raises(ValueError, match="no serving mode 'streaming'"):
        modes.policy(_spec("streaming.yaml"))


@pytest.mark.parametrize("name", ["online", "batch", "streaming"])
def test_each_mode_is_registered_under_the_name_the_spec_uses(name: str) -> None:
    found = modes.mode(name)
    assert found is not None
    assert found.name == name == found.layout.mode
    assert found in modes.all_modes()


@pytest.mark.parametrize("example", ["online.yaml", "full.yaml", "batch.yaml", "streaming.yaml"])
def test_the_release_path_and_the_engine_read_one_layout(example: str) -> None:
    """Every live stage the release machinery walks is one the decision engine can judge, and the stage it says
    follows is the next judged stop on the same path."""
    spec = _spec(example)
    policy = modes.policy(spec)
    path = releases.stages(spec)
    judged: list[LiveStage] = [
        live(policy.rollout, policy.layout, stage.phase, stage.step)
        for stage in path
        if stage.phase in {"Shadowing", "Canary"}
    ]
    assert judged, "a release is judged on live traffic somewhere"
    for here, after in pairwise(judged):
        if not after.full:
            assert here.following == after.name
    assert judged[-1].following is None


def test_batch_has_no_canary_and_always_shadows() -> None:
    spec = _spec("batch.yaml")
    phases = [stage.phase for stage in releases.stages(spec)]
    assert "Canary" not in phases
    assert "Shadowing" in phases
    with pytest.raises(ValueError, match="batch serving has no canary"):
        deciding.decide(
            modes.policy(spec),
            deciding.Timing(T0, T0, T0),
            phase="Canary",
            step=0,
            window=None,
            holdouts=None,
        )


TRAFFIC = [
    {"provider": "gateway-api", "gateway": "ml/public"},
    {"provider": "istio"},
    {"provider": "kserve"},
    {"provider": "traefik", "gateway": "ml/public"},
    {"provider": "traefik", "hostnames": ["churn.example.com"]},
]


@pytest.mark.parametrize("example", ["online.yaml", "full.yaml", "batch.yaml", "streaming.yaml"])
@pytest.mark.parametrize("routing", TRAFFIC, ids=lambda routing: "-".join(sorted(routing)) + "-" + routing["provider"])
def test_every_planned_child_is_of_a_kind_its_maker_declares(example: str, routing: dict[str, object]) -> None:
    """What a mode or a provider declares is what is watched, observed, pruned and granted in the chart's RBAC: a
    child of an undeclared kind would be applied once and never seen again."""
    spec = _spec(example)
    rollout = spec.rollout.model_copy(update={"traffic": specs.Traffic.model_validate(routing)})
    spec = spec.model_copy(update={"rollout": rollout})
    serving = modes.mode(spec.serving.mode)
    assert serving is not None
    provider = traffic.provider(spec.rollout.traffic.provider)
    declared = {*serving.children, *provider.kinds}
    incumbent, challenger = modes.Live("v1", "s3://m/v1/"), modes.Live("v2", "s3://m/v2/")
    shadow = 100 if provider.supports_shadow else 0
    for release in (
        modes.Release(incumbent),
        modes.Release(incumbent, challenger, shadow_percent=shadow),
        modes.Release(incumbent, challenger, challenger_weight=25),
    ):
        plan = planners.plan("churn", "ml", "uid-1", spec, release)
        assert plan.serving
        for child in [*plan.serving, *plan.routes]:
            # The retraining CronJob is the operator's own, whatever the mode.
            retraining = "steward.dev/retraining" in child["metadata"]["labels"]
            assert kind_of(child) in (CHILD_KINDS if retraining else declared)


def test_readiness_is_the_owning_modes_reading() -> None:
    isvc = {
        "kind": "InferenceService",
        "metadata": {"name": "churn--v1", "generation": 2},
        "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    cron = {"kind": "CronJob", "metadata": {"name": "churn--v1"}}
    route = {"kind": "HTTPRoute", "metadata": {"name": "churn"}}
    assert modes.ready(cron, frozenset())
    assert not modes.ready(isvc, frozenset())  # Ready, but for an older generation.
    assert modes.ready(isvc, frozenset(), current=False)
    assert not modes.ready(route, frozenset())


def test_every_guardrail_the_spec_names_is_registered_once() -> None:
    """A guardrail is registered in guardrails.GUARDRAILS; the spec's enum must name exactly those."""
    assert set(get_args(specs.Guardrail.model_fields["name"].annotation)) == set(GUARDRAILS)
