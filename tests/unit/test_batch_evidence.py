"""A batch release's evidence: the termination messages its challenger's runs leave, read as the hostile input a
pod's status may be, summed into a window, and gathered for the stage a release is in."""

from __future__ import annotations

import asyncio
import json
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from steward_operator import specs
from steward_operator.deciding import decide
from steward_operator.evidence import ArmCounts, Losses, MetricsUnavailableError, Outcomes, PairCounts
from steward_operator.evidence.runs import REFUSED, Run, UnreadableRunError, parse, window
from steward_operator.gathering import gather
from steward_operator.guardrails import Window
from steward_operator.stages import Stage
from tests.conftest import REPOSITORY
from tests.support.decisions import BATCH, SHADOWED, live, timing

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
STARTED = NOW - timedelta(hours=3)
BEGAN = NOW - timedelta(days=1)


def _side(version: str, **changes: Any) -> dict[str, Any]:
    return {
        "version": version,
        "digest": f"sha256:{version}",
        "rows": 1_000,
        "rejected": 10,
        "predictions": {"0": 600, "1": 390},
        "holdout": {"metrics": {"accuracy": 0.95 if version == "v1" else 0.94}, "data": "abcdef0123456789"},
        **changes,
    }


def _message(incumbent: dict[str, Any] | None = None, challenger: dict[str, Any] | None = None, **changes: Any) -> str:
    comparison = {
        "incumbent": incumbent or _side("v1"),
        "challenger": challenger or _side("v2"),
        "pairs": 985,
        "disagreements": 40,
    }
    return json.dumps({"runId": "r1", "rowsRead": 1_000, "comparison": {**comparison, **changes}})


def _run(job: str, finished: datetime, message: str | None = None) -> Run:
    return parse(job, finished, message or _message())


# --- reading a run's termination message ----------------------------------------------------------------------


def test_a_summary_is_read_whole() -> None:
    run = parse("credit--v2-1", NOW, _message())
    assert (run.job, run.finished, run.failed, run.pairs, run.disagreements) == ("credit--v2-1", NOW, None, 985, 40)
    assert run.incumbent is not None
    assert run.challenger is not None
    assert (run.incumbent.version, run.incumbent.rows, run.incumbent.rejected) == ("v1", 1_000, 10)
    assert run.challenger.predictions == {"0": 600, "1": 390}
    assert run.challenger.held_out.metrics == {"accuracy": 0.94}
    assert run.challenger.held_out.data == "abcdef0123456789"
    assert run.challenger.held_out.digests == frozenset({"sha256:v2"})


def test_a_failed_run_says_what_failed() -> None:
    message = json.dumps({"failed": REFUSED, "exitCode": 4, "error": "bundle refused: schema.json does not match"})
    run = parse("credit--v2-1", NOW, message)
    assert (run.failed, run.error, run.incumbent) == (REFUSED, "bundle refused: schema.json does not match", None)


def _hostile() -> dict[str, str]:
    def side(**changes: Any) -> str:
        return _message(challenger={**_side("v2"), **changes})

    return {
        "not JSON": "{'pairs': 3",
        "a list": "[1, 2]",
        "no comparison and no failure": json.dumps({"runId": "r1"}),
        "failed is a number": json.dumps({"failed": 4}),
        "comparison is a list": json.dumps({"comparison": []}),
        "no incumbent": json.dumps({"comparison": {"challenger": _side("v2"), "pairs": 0, "disagreements": 0}}),
        "a negative count": side(rows=-1),
        "a fractional count": side(rows=10.5),
        "a boolean count": side(rejected=True),
        "a count as text": side(rows="1000"),
        "a count beyond a float's": side(rows=2**60),
        "more rejected than rows": side(rows=5, rejected=6),
        "more predictions than rows scored": side(predictions={"0": 10_000}),
        "predictions as a list": side(predictions=[600, 390]),
        "a prediction count that is no count": side(predictions={"0": "many"}),
        "too many bins": side(predictions={str(index): 0 for index in range(1_001)}),
        "no version": side(version=""),
        "a version that is no text": side(version=2),
        "a held-out metric that is no number": side(holdout={"metrics": {"accuracy": "high"}}),
        "a held-out metric that is NaN": side(holdout={"metrics": {"accuracy": float("nan")}}),
        "held-out results that are no mapping": side(holdout=[0.9]),
        "more disagreements than pairs": _message(pairs=10, disagreements=11),
        "more pairs than rows scored": _message(pairs=5_000, disagreements=0),
        "longer than a termination message": _message(pad="x" * 5_000),
    }


@pytest.mark.parametrize("message", list(_hostile().values()), ids=list(_hostile()))
def test_anything_but_a_summary_that_adds_up_is_unreadable(message: str) -> None:
    with pytest.raises(UnreadableRunError):
        parse("credit--v2-1", NOW, message)


# --- the window of several runs -------------------------------------------------------------------------------


def test_runs_add_up_to_one_window_with_rejects_as_errors() -> None:
    first = _run("a", NOW - timedelta(hours=2))
    second = _run("b", NOW - timedelta(hours=1))
    refused = Run("c", NOW, REFUSED, "bundle refused")
    incumbent, challenger, pairs = window([first, second, refused])
    assert (incumbent.requests, incumbent.errors, incumbent.targets) == (2_000, 20, 2)
    assert challenger.predictions == {"0": 1_200, "1": 780}
    assert challenger.newest == NOW - timedelta(hours=1)
    assert (incumbent.timed, incumbent.latency) == (0, {})
    assert (pairs.pairs, pairs.disagreements) == (1_970, 80)


def test_no_runs_are_an_empty_window() -> None:
    incumbent, challenger, pairs = window([])
    assert (incumbent.requests, challenger.requests, pairs.pairs, challenger.newest) == (0, 0, 0, None)


# --- gathering a batch release's evidence ---------------------------------------------------------------------


@dataclass
class Runs:
    """A run source answering from fixed runs, finished at or after the time asked, and remembering the asking."""

    found: list[Run]
    down: bool = False
    asked: list[tuple[str, str, datetime, str]] = field(default_factory=list)

    async def runs(self, model: str, version: str, since: datetime, *, namespace: str) -> list[Run]:
        self.asked.append((model, version, since, namespace))
        if self.down:
            raise MetricsUnavailableError("the runs could not be read: 503")
        return [run for run in self.found if run.finished >= since]


def _batch(phase: str) -> specs.ModelDeployment:
    manifest = yaml.safe_load((REPOSITORY / "examples" / "batch.yaml").read_text())
    manifest["metadata"]["namespace"] = "risk"
    manifest["spec"]["model"] = {"version": "v2", "bundle": "s3://models/v2/"}
    shadow = {"incumbent": 100, "challenger": 0, "shadow": 100 if phase == "Shadowing" else 0}
    manifest["status"] = {
        "phase": phase,
        "stageStarted": STARTED.isoformat(),
        "incumbent": {"version": "v1", "bundle": "s3://models/v1/"},
        "challenger": {"version": "v2", "bundle": "s3://models/v2/", "since": BEGAN.isoformat()},
        "weights": shadow,
    }
    return specs.ModelDeployment.model_validate(manifest)


def _gather(phase: str, source: Runs, monitor: Monitor | None = None, deployment: Any = None) -> Any:
    deployment = deployment or _batch(phase)
    return asyncio.run(gather(None, deployment, "risk", NOW, run_source=source, monitor_source=monitor))


@dataclass
class Monitor:
    """A monitor answering fixed pairs and losses: those of the incumbent's runs, which scored each row with both
    bundles and reported both answers."""

    asked: list[str] = field(default_factory=list)

    async def pairs(
        self, model: str, incumbent: str, challenger: str, since: datetime, *, namespace: str
    ) -> PairCounts:
        self.asked.append(f"pairs of {incumbent} and {challenger} since {since:%H:%M}")
        return PairCounts(pairs=1_430, disagreements=9, labelled=1_000, only_incumbent=30, only_challenger=25)

    async def losses(
        self, model: str, metric: str, since: datetime, until: datetime, *, namespace: str
    ) -> dict[str, Losses]:
        self.asked.append(f"{metric} from {since:%d %H:%M} to {until:%d %H:%M}")
        return {"v1": Losses(1_000, 0.06, 0.05), "v2": Losses(1_000, 0.07, 0.06)}


def _labelled_within(delay: str) -> specs.ModelDeployment:
    deployment = _batch("Shadowing")
    outcome = deployment.spec.monitoring.outcome.model_copy(update={"label_delay": delay})  # type: ignore[union-attr]
    monitoring = deployment.spec.monitoring.model_copy(update={"outcome": outcome})
    return deployment.model_copy(update={"spec": deployment.spec.model_copy(update={"monitoring": monitoring})})


def test_shadow_is_judged_on_the_runs_since_it_began_that_compared_these_two_versions() -> None:
    source = Runs(
        [
            _run("before", STARTED - timedelta(minutes=1)),
            _run("a", STARTED + timedelta(minutes=30)),
            _run("another incumbent", STARTED + timedelta(minutes=40), _message(incumbent=_side("v0"))),
            _run("b", STARTED + timedelta(hours=1)),
            Run("lost", STARTED + timedelta(hours=2), "unreadable", "not JSON"),
        ]
    )
    evidence = _gather("Shadowing", source)
    assert source.asked == [("credit-limits", "v2", STARTED, "risk")]
    assert (evidence.version, evidence.stage, evidence.since, evidence.failure) == (
        "v2",
        Stage("Shadowing"),
        STARTED,
        None,
    )
    assert evidence.window.incumbent.requests == 2_000
    assert evidence.window.challenger.errors == 20
    assert evidence.window.pairs.disagreements == 80


def test_with_a_guardrail_on_outcomes_shadow_reads_the_monitors_pairs_and_matured_outcomes() -> None:
    """The example's rollout judges outcomes: the pairs are the monitor's (the incumbent's runs reported both
    versions' answers, and the team labelled the output), the counts the challenger's runs'."""
    monitor = Monitor()
    source = Runs([_run("a", STARTED + timedelta(minutes=30))])
    evidence = _gather("Shadowing", source, monitor, _labelled_within("2h"))
    assert evidence.window.incumbent.requests == 1_000
    assert evidence.window.pairs == PairCounts(1_430, 9, 1_000, 30, 25)
    assert evidence.window.outcomes == Outcomes(
        "accuracy", Losses(1_000, 0.06, 0.05), Losses(1_000, 0.07, 0.06), NOW - timedelta(hours=2), 5_000
    )
    assert monitor.asked == ["pairs of v1 and v2 since 09:00", "accuracy from 03 12:00 to 04 10:00"]


def test_without_a_guardrail_on_outcomes_the_monitor_is_not_asked() -> None:
    deployment = _batch("Shadowing")
    kept = [guardrail for guardrail in deployment.spec.rollout.guardrails if guardrail.name != "outcome"]
    rollout = deployment.spec.rollout.model_copy(update={"guardrails": kept})
    deployment = deployment.model_copy(update={"spec": deployment.spec.model_copy(update={"rollout": rollout})})
    monitor = Monitor()
    evidence = _gather("Shadowing", Runs([_run("a", STARTED + timedelta(minutes=30))]), monitor, deployment)
    assert evidence.window.pairs.disagreements == 40
    assert monitor.asked == []


def test_validation_reads_both_bundles_held_out_results_from_the_newest_run_since_the_challenger_began() -> None:
    newer = _message(challenger=_side("v2", holdout={"metrics": {"accuracy": 0.9}, "data": "abcdef0123456789"}))
    source = Runs([_run("a", BEGAN + timedelta(hours=1)), _run("b", BEGAN + timedelta(hours=2), newer)])
    evidence = _gather("Validating", source)
    assert source.asked[0][2] == BEGAN
    assert evidence.holdouts.incumbent.metrics == {"accuracy": 0.95}
    assert evidence.holdouts.challenger.metrics == {"accuracy": 0.9}
    assert evidence.holdouts.incumbent.data == evidence.holdouts.challenger.data


def test_validation_without_a_run_yet_has_no_held_out_results() -> None:
    evidence = _gather("Validating", Runs([]))
    assert (evidence.holdouts.incumbent, evidence.holdouts.challenger) == (None, None)


@pytest.mark.parametrize("phase", ["Validating", "Shadowing"])
def test_a_run_that_could_not_load_the_challengers_bundle_is_its_failure(phase: str) -> None:
    refused = Run("credit--v2-7", STARTED + timedelta(minutes=5), REFUSED, "bundle refused: digest mismatch")
    evidence = _gather(phase, Runs([refused]))
    assert evidence.failure == "its run credit--v2-7 could not load its bundle: bundle refused: digest mismatch"


def test_other_failures_are_no_failure_of_the_challenger() -> None:
    runtime = Run("credit--v2-7", STARTED + timedelta(minutes=5), "runtime", "the input could not be read")
    assert _gather("Shadowing", Runs([runtime])).failure is None


def test_runs_that_cannot_be_read_give_evidence_with_neither_part() -> None:
    evidence = _gather("Shadowing", Runs([], down=True))
    assert (evidence.window, evidence.holdouts, evidence.since) == (None, None, STARTED)


# --- deciding on it -------------------------------------------------------------------------------------------


def _untimed(requests: int, errors: int) -> ArmCounts:
    return ArmCounts(requests=requests, errors=errors, predictions={"0": requests - errors})


def test_a_batch_shadow_is_promoted_on_untimed_rows_under_the_default_latency_guardrail() -> None:
    # The default guardrails are errorRate and slowRequests: a batch run times no row, so slowRequests is not judged.
    verdict = live(Window(_untimed(100_000, 100), _untimed(100_000, 100)), "Shadowing", None, BATCH)
    assert verdict.decision == "promote", verdict.rule
    assert [evidence.metric for evidence in verdict.evidence] == ["errorRate", "errorRateNonInferiority"]


def test_online_rows_without_timings_still_hold_on_the_latency_guardrail() -> None:
    verdict = live(Window(_untimed(100_000, 100), _untimed(100_000, 100)), "Shadowing", None, SHADOWED)
    assert verdict.decision == "hold"
    assert "guardrail slowRequests waits for latency" in verdict.rule


def test_a_batch_challenger_rejecting_more_rows_is_rolled_back() -> None:
    verdict = live(Window(_untimed(20_000, 20), _untimed(20_000, 400)), "Shadowing", None, BATCH)
    assert verdict.decision == "rollback"
    assert "errorRate" in verdict.rule


@pytest.mark.parametrize("phase", ["Validating", "Shadowing"])
def test_a_challenger_that_failed_on_its_own_is_rolled_back_at_once(phase: str) -> None:
    verdict = decide(
        BATCH,
        timing(),
        phase=typing.cast("specs.Phase", phase),
        window=None,
        holdouts=None,
        failure="its run credit--v2-7 could not load its bundle: digest mismatch",
    )
    assert verdict.decision == "rollback"
    assert verdict.rule == (
        "the challenger failed on its own: its run credit--v2-7 could not load its bundle: digest mismatch"
    )
