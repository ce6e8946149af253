"""One ModelDeployment as the operator sees it, driven through the release state machine one reconcile at a time, and
the deployments the release tests start from. Every reconcile checks that its step is a fixed point of `advance` for
an unchanged world."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import yaml

from steward_operator import guardrails, retraining, specs
from steward_operator.children import Owner
from steward_operator.evidence.base import ArmCounts
from steward_operator.releases import Evidence, Observed, Step
from steward_operator.releasing import advance
from steward_operator.stages import Stage
from tests.conftest import REPOSITORY

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
WEEK = timedelta(hours=168)  # rollout.rollbackWindow in every example
Action = Literal["promote", "promoteFull", "abort", "retry", "pause", "resume", "rollback", "retrain"]


def example_spec(example: str = "online.yaml", **rollout: object) -> specs.ModelDeploymentSpec:
    """An example manifest's spec, serving v1, with `rollout` fields replaced."""
    manifest = yaml.safe_load((REPOSITORY / "examples" / example).read_text())
    manifest["spec"]["model"] = model_ref(example, "v1").model_dump(by_alias=True, exclude_none=True)
    manifest["spec"].setdefault("rollout", {}).update(rollout)
    return specs.ModelDeploymentSpec.model_validate(manifest["spec"])


def model_ref(example: str, version: str, digest: str | None = None) -> specs.ModelRef:
    return specs.ModelRef(
        version=version, bundle=f"s3://models/{example.removesuffix('.yaml')}/{version}/", digest=digest
    )


def weights_of(incumbent: int, challenger: int, shadow: int) -> specs.Weights:
    return specs.Weights(incumbent=incumbent, challenger=challenger, shadow=shadow)


def condition_of(status: specs.ModelDeploymentStatus, kind: str) -> specs.Condition:
    (found,) = [condition for condition in status.conditions if condition.type == kind]
    return found


def holding(status: specs.ModelDeploymentStatus) -> dict[str, str]:
    """Which of kstatus's three conditions hold, and why: {"Ready": "Stable"} for a healthy deployment."""
    found = {condition.type: condition for condition in status.conditions}
    return {kind: found[kind].reason for kind in ("Ready", "Reconciling", "Stalled") if found[kind].status == "True"}


def reasons(step: Step) -> list[str]:
    return [decision.reason for decision in step.decisions]


@dataclass
class World:
    """One ModelDeployment as the operator sees it: its spec, the status it last wrote, the clock and which
    versions' children are ready. Every change is followed by a reconcile, as a watch event would cause."""

    example: str = "online.yaml"
    rollout: dict[str, object] = field(default_factory=dict)
    ready: set[str] = field(default_factory=set)
    status: specs.ModelDeploymentStatus = field(default_factory=specs.ModelDeploymentStatus)
    now: datetime = T0
    generation: int = 1
    evidence: Evidence | None = None
    """What the metrics show of the current stage, as the operator would read it before each reconcile."""
    digests: dict[str, frozenset[str]] = field(default_factory=dict)
    """The bundle digests each version's predictors report."""
    spec: specs.ModelDeploymentSpec = field(init=False)

    def __post_init__(self) -> None:
        self.spec = example_spec(self.example, **self.rollout)

    @property
    def observed(self) -> Observed:
        unpinned = {s.version for s in (self.status.incumbent, self.status.challenger) if s and not s.digest}
        digests = {version: found for version, found in self.digests.items() if version in unpinned}
        return Observed(self.generation, self.now, frozenset(self.ready), self.evidence, digests)

    def reconcile(self) -> Step:
        """What the operator does with what it sees: the release step, then retraining (no metrics, no Jobs)."""
        step = advance(self.spec, self.status, self.observed)
        assert_fixed_point(self.spec, step, self.observed)
        owner = Owner(name="churn", namespace="ml", uid="uid-1", traffic=self.spec.rollout.traffic)
        retrained = retraining.step(owner, self.spec, step.status, retraining.Signals(), self.now)
        self.status = retrained.status
        return Step(retrained.status, (*step.decisions, *retrained.decisions))

    def wait(self, duration: timedelta = timedelta(minutes=1)) -> Step:
        self.now += duration
        return self.reconcile()

    def serve(self, version: str) -> Step:
        """spec.model names `version` now: a new generation, as a Git commit makes."""
        self.spec = self.spec.model_copy(update={"model": model_ref(self.example, version)})
        self.generation += 1
        self.now += timedelta(minutes=1)
        return self.reconcile()

    def command(self, action: Action, to_version: str | None = None) -> Step:
        """What `kubectl steward ACTION` writes to status, then the reconcile it causes."""
        self.now += timedelta(minutes=1)
        wanted = specs.Operation(action=action, to_version=to_version, requested_at=self.now, requested_by="ana")
        self.status = self.status.model_copy(update={"operation": wanted})
        return self.reconcile()

    def become_ready(self, *versions: str) -> Step:
        self.ready |= set(versions)
        return self.wait()


def assert_fixed_point(spec: specs.ModelDeploymentSpec, step: Step, observed: Observed) -> None:
    again = advance(spec, step.status, observed)
    assert again.status == step.status
    assert again.decisions == ()


def stable(example: str = "online.yaml", **rollout: object) -> World:
    """A deployment serving v1, ready."""
    world = World(example, rollout, ready={"v1"})
    world.reconcile()
    assert world.status.phase == "Stable"
    return world


def promoted(example: str = "online.yaml", **rollout: object) -> World:
    """v1 replaced by v2 through a full release; v2 serves and v1's children are gone."""
    world = stable(example, **rollout)
    world.serve("v2")
    world.become_ready("v2")
    world.command("promoteFull")
    world.ready = {"v2"}
    world.wait()
    assert world.status.phase == "Promoted"
    return world


def mid_canary() -> World:
    world = stable()
    world.serve("v2")
    world.become_ready("v2")
    world.command("promote")
    world.command("promote")
    assert world.status.weights == weights_of(75, 25, 0)
    return world


def counts(requests: int, errors: int = 0) -> ArmCounts:
    latency = {0.1: requests, math.inf: requests}
    return ArmCounts(requests=requests, errors=errors, timed=requests, latency=latency, predictions={"yes": requests})


def live(world: World, incumbent: ArmCounts, challenger: ArmCounts) -> Evidence:
    """The window the operator would read for the world's current stage."""
    status = world.status
    assert status.challenger is not None
    stage = Stage(status.phase or "Validating", status.canary_step)
    window = guardrails.Window(incumbent, challenger)
    return Evidence(status.challenger.version, stage, status.stage_started, window=window)
