"""What evidence the reconcile loop reads for a release, and when it reads none: against a provider that records
what it was asked (the reading itself is the Prometheus provider's, tested against a real server)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from steward_operator import releases, specs
from steward_operator.evidence import (
    ArmCounts,
    Behind,
    Gateway,
    HeldOutResults,
    Losses,
    MetricsUnavailableError,
    Outcomes,
    PairCounts,
    Quality,
)
from steward_operator.gathering import gather, read_lag
from steward_operator.stages import Stage
from tests.conftest import REPOSITORY

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
STARTED = NOW - timedelta(minutes=7)


@dataclass
class Recording:
    """A metric provider that answers from fixed counts and remembers every question."""

    down: bool = False
    asked: list[tuple[Any, ...]] = field(default_factory=list)
    name: str = "recording"
    partitions: int = 6

    async def window(
        self,
        model: str,
        version: str,
        start: datetime,
        end: datetime,
        slow_after: float | None = None,
        *,
        namespace: str | None = None,
        gateway: Gateway | None = None,
    ) -> ArmCounts:
        self._ask("window", model, version, start, end, namespace, gateway)
        return ArmCounts(requests=100 if version == "v1" else 10)

    async def held_out(
        self, model: str, version: str, at: datetime, *, namespace: str | None = None
    ) -> HeldOutResults | None:
        self._ask("held_out", model, version, at, namespace)
        return None if version == "v2" else HeldOutResults({"rmse": 3.0}, "abc")

    async def drifting(self, model: str, version: str, *, namespace: str | None = None) -> tuple[str, ...]:
        self._ask("drifting", model, version, namespace)
        return ()

    async def quality(self, model: str, version: str, *, namespace: str | None = None) -> Quality:
        self._ask("quality", model, version, namespace)
        return Quality({}, {}, 0)

    async def lag(self, model: str, *, namespace: str | None = None) -> dict[str, Behind]:
        self._ask("lag", model, namespace)
        return {"v2": Behind(40, self.partitions), "v1": Behind(40, self.partitions)} if self.partitions else {}

    async def healthy(self) -> bool:
        return not self.down

    def _ask(self, *question: Any) -> None:
        self.asked.append(question)
        if self.down:
            raise MetricsUnavailableError("Prometheus at http://prometheus:9090: no answer within 5 s")


def _deployment(example: str = "full.yaml", **status: Any) -> specs.ModelDeployment:
    manifest = yaml.safe_load((REPOSITORY / "examples" / example).read_text())
    manifest["metadata"]["namespace"] = "ml"
    manifest["spec"]["model"]["version"] = "v2"
    base = {
        "phase": "Canary",
        "canaryStep": 1,
        "stageStarted": STARTED.isoformat(),
        "incumbent": {"version": "v1", "bundle": "s3://models/v1/"},
        "challenger": {"version": "v2", "bundle": "s3://models/v2/", "since": STARTED.isoformat()},
        "weights": {"incumbent": 75, "challenger": 25, "shadow": 0},
    }
    manifest["status"] = {**base, **status}
    return specs.ModelDeployment.model_validate(manifest)


def _gather(deployment: specs.ModelDeployment, provider: Recording, pairs: Pairing | None = None) -> Any:
    return asyncio.run(gather(provider, deployment, "ml", NOW, monitor_source=pairs))


def test_a_canary_reads_both_versions_since_its_split_took_effect() -> None:
    provider = Recording()
    evidence = _gather(_deployment(), provider)
    assert (evidence.version, evidence.stage, evidence.since) == ("v2", Stage("Canary", 1), STARTED)
    assert (evidence.window.incumbent.requests, evidence.window.challenger.requests) == (100, 10)
    assert evidence.holdouts is None
    deployment = _deployment()
    name, traffic = deployment.metadata["name"], deployment.spec.rollout.traffic.provider
    # With what the gateway in front of each version's own predictor Service answered for it.
    assert sorted(provider.asked) == [
        ("window", name, "v1", STARTED, NOW, "ml", Gateway(traffic, "ml", f"{name}--v1-predictor", 80)),
        ("window", name, "v2", STARTED, NOW, "ml", Gateway(traffic, "ml", f"{name}--v2-predictor", 80)),
    ]


def test_validation_reads_held_out_results_and_a_version_not_reported_is_none() -> None:
    weights = {"incumbent": 100, "challenger": 0, "shadow": 0}
    evidence = _gather(_deployment(phase="Validating", canaryStep=None, weights=weights), Recording())
    assert evidence.stage == Stage("Validating")
    assert evidence.window is None
    assert evidence.holdouts.incumbent.metrics == {"rmse": 3.0}
    assert evidence.holdouts.challenger is None


def test_an_unreadable_provider_is_evidence_with_nothing_in_it() -> None:
    evidence = _gather(_deployment(), Recording(down=True))
    assert (evidence.version, evidence.stage, evidence.window, evidence.holdouts) == (
        "v2",
        Stage("Canary", 1),
        None,
        None,
    )


@pytest.mark.parametrize(
    ("example", "status"),
    [
        ("full.yaml", {"phase": "Stable", "challenger": None, "canaryStep": None}),
        ("full.yaml", {"paused": True}),
        # The challenger is not ready yet: the split the stage asks for has not taken effect.
        ("full.yaml", {"weights": {"incumbent": 100, "challenger": 0, "shadow": 0}}),
        ("full.yaml", {"phase": "RolledBack", "canaryStep": None}),
        # A batch challenger is judged on its runs, which nothing reads without a run source.
        ("batch.yaml", {"phase": "Shadowing", "canaryStep": None, "weights": {"incumbent": 100, "shadow": 100}}),
    ],
    ids=["no release", "paused", "traffic not moved", "switching back", "batch without a run source"],
)
def test_nothing_is_read_when_no_stage_is_being_judged(example: str, status: dict[str, Any]) -> None:
    provider = Recording()
    assert _gather(_deployment(example, **status), provider) is None
    assert provider.asked == []


def _lag(deployment: specs.ModelDeployment, provider: Recording) -> list[specs.Lag] | None:
    return _read_lag(deployment, provider).status.lag


def _read_lag(deployment: specs.ModelDeployment, provider: Recording) -> releases.Step:
    return asyncio.run(read_lag(provider, deployment, releases.Step(deployment.status), NOW))


def test_a_streams_lag_is_read_into_status_per_version_and_kept_while_unreadable_or_unreported() -> None:
    provider = Recording()
    deployment = _deployment("streaming.yaml")
    lag = _lag(deployment, provider)
    assert lag == [
        specs.Lag(version="v1", records=40, partitions=6, observed_at=NOW),
        specs.Lag(version="v2", records=40, partitions=6, observed_at=NOW),
    ]
    assert provider.asked == [("lag", deployment.metadata["name"], "ml")]
    assert _lag(_with_lag(deployment, lag or []), Recording(down=True)) == lag
    assert _lag(_with_lag(deployment, lag or []), Recording(partitions=0)) == lag


def _with_lag(deployment: specs.ModelDeployment, lag: list[specs.Lag]) -> specs.ModelDeployment:
    return deployment.model_copy(update={"status": deployment.status.model_copy(update={"lag": lag})})


def test_more_workers_than_partitions_is_warned_of_once() -> None:
    deployment = _deployment("streaming.yaml")
    workers = deployment.spec.serving.streaming
    assert workers is not None
    (idle,) = _read_lag(deployment, Recording(partitions=workers.replicas - 1)).decisions
    assert (idle.reason, idle.warning) == ("IdleWorkers", True)
    assert idle.message.startswith(f"{workers.replicas} workers for the {workers.replicas - 1} partitions of ")
    assert "1 stand idle" in idle.message
    seen = _with_lag(deployment, _lag(deployment, Recording(partitions=workers.replicas - 1)) or [])
    assert _read_lag(seen, Recording(partitions=workers.replicas - 1)).decisions == ()
    assert _read_lag(deployment, Recording(partitions=workers.replicas)).decisions == ()


def test_a_mode_that_reports_no_lag_keeps_none_in_status() -> None:
    provider = Recording()
    stale = [specs.Lag(version="v1", records=3, observed_at=NOW)]
    deployment = _deployment(lag=[item.model_dump(mode="json", by_alias=True) for item in stale])
    assert _lag(deployment, provider) is None
    assert provider.asked == []


@dataclass
class Pairing:
    """A monitor that answers fixed pairs and losses, and remembers every question."""

    down: bool = False
    asked: list[tuple[Any, ...]] = field(default_factory=list)

    async def pairs(
        self, model: str, incumbent: str, challenger: str, since: datetime, *, namespace: str
    ) -> PairCounts:
        self.asked.append((model, incumbent, challenger, since, namespace))
        if self.down:
            raise MetricsUnavailableError("the monitor at http://steward-monitor:8080: no answer within 5 s")
        return PairCounts(pairs=400, disagreements=4)

    async def losses(
        self, model: str, metric: str, since: datetime, until: datetime, *, namespace: str
    ) -> dict[str, Losses]:
        self.asked.append((model, metric, since, until, namespace))
        if self.down:
            raise MetricsUnavailableError("the monitor at http://steward-monitor:8080: no answer within 5 s")
        return {"v1": Losses(900, 0.1, 0.09), "v2": Losses(800, 0.12, 0.1)}


def _paired_shadow(**guardrails: float) -> specs.ModelDeployment:
    deployment = _deployment(
        phase="Shadowing", canaryStep=None, weights={"incumbent": 100, "challenger": 0, "shadow": 100}
    )
    rollout = deployment.spec.rollout.model_copy(
        update={
            "shadow": specs.Shadow(),
            "guardrails": [specs.Guardrail(name=name, tolerance=value) for name, value in guardrails.items()],
        }
    )
    return deployment.model_copy(update={"spec": deployment.spec.model_copy(update={"rollout": rollout})})


def test_the_shadow_stage_reads_pairs_since_it_began_when_a_guardrail_compares_them() -> None:
    source = Pairing()
    deployment = _paired_shadow(errorRate=0.0, disagreement=0.05)
    evidence = _gather(deployment, Recording(), source)
    assert evidence.window.pairs == PairCounts(pairs=400, disagreements=4)
    assert source.asked == [(deployment.metadata["name"], "v1", "v2", STARTED, "ml")]
    # Unreadable: the counts are still read, and the paired guardrails wait, saying why.
    unread = _gather(deployment, Recording(), Pairing(down=True))
    assert unread.window.incumbent.requests == 100
    assert unread.window.pairs is None


def test_no_pairs_are_read_without_a_paired_guardrail_nor_outside_shadow() -> None:
    source = Pairing()
    _gather(_paired_shadow(errorRate=0.0), Recording(), source)
    _gather(_deployment(), Recording(), source)
    assert source.asked == []


def _gated(label_delay: str, since: datetime = STARTED) -> specs.ModelDeployment:
    deployment = _deployment()
    rollout = deployment.spec.rollout.model_copy(
        update={"guardrails": [specs.Guardrail(name="outcome", tolerance=0.02)]}
    )
    monitoring = deployment.spec.monitoring.model_copy(
        update={"outcome": specs.Outcome(metric="accuracy", label_delay=label_delay, min_labels=300)}
    )
    spec = deployment.spec.model_copy(update={"rollout": rollout, "monitoring": monitoring})
    challenger = deployment.status.challenger.model_copy(update={"since": since})  # type: ignore[union-attr]
    status = deployment.status.model_copy(update={"challenger": challenger})
    return deployment.model_copy(update={"spec": spec, "status": status})


def test_outcomes_are_read_for_the_predictions_old_enough_since_the_challenger_began() -> None:
    source = Pairing()
    began = NOW - timedelta(hours=5)
    deployment = _gated("1h", since=began)
    outcomes = _gather(deployment, Recording(), source).window.outcomes
    assert outcomes == Outcomes(
        "accuracy", Losses(900, 0.1, 0.09), Losses(800, 0.12, 0.1), NOW - timedelta(hours=1), 300
    )
    assert source.asked == [(deployment.metadata["name"], "accuracy", began, NOW - timedelta(hours=1), "ml")]


def test_before_any_outcome_is_due_nothing_is_asked_and_the_guardrail_waits() -> None:
    source = Pairing()
    outcomes = _gather(_gated("48h"), Recording(), source).window.outcomes
    assert (outcomes.incumbent, outcomes.challenger, outcomes.until) == (None, None, NOW - timedelta(days=2))
    assert source.asked == []
    assert (
        _gather(_gated("1h", since=NOW - timedelta(hours=5)), Recording(), Pairing(down=True)).window.outcomes is None
    )
    _gather(_deployment(), Recording(), source)  # No outcome guardrail: nothing to read.
    assert source.asked == []
