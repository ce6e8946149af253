"""The release decision, a pure function: a stage's evidence in, the next move and the rule that fired out.

| # | stage | when | decision |
|---|---|---|---|
| 0 | any | the challenger failed on its own (a batch run could not load its bundle) | rollback |
| 1 | Canary | a step of 100 % (the API refuses one; an older resource may hold it) after a judged stage | promote |
| 1 | Canary | a step of 100 % that no earlier stage judged the challenger on live traffic before | rollback |
| 2 | any | the metric provider could not be read (the stage's evidence is None) | pause |
| 3 | Shadowing, Canary | a reading cannot be used (NaN, negative, errors above requests, a bucket above +Inf) | pause |
| 4 | any | the release has run longer than rollout.maxDuration | rollback |
| 5 | Validating | no later stage can judge the challenger live (online, no shadow, its only step 100 %) | rollback |
| 5 | Validating | either version's held-out result not known yet | hold |
| 5 | Validating | the challenger worse than the incumbent by more than the tolerance | rollback |
| 5 | Validating | otherwise | advance |
| 6 | Shadowing, Canary | any guardrail credibly worse, however little evidence there is | rollback |
| 7 | Shadowing, Canary | minimum duration over, and an arm answered no requests | continue |
| 8 | Shadowing, Canary | minimum requests or minimum duration not reached | continue |
| 9 | Shadowing, Canary | a guardrail has no data on a version (no latency histogram, no predictions) | hold |
| 10 | Shadowing, Canary | not the last stage | advance |
| 11 | Shadowing, Canary | last stage, error rate credibly not worse than the incumbent's + margin | promote |
| 11 | Shadowing, Canary | last stage, not yet credibly not worse | continue |

The first row that applies decides. The last stage is the last canary step below 100 % online (the shadow stage
when every step is 100 %), and the shadow stage in batch (batch has no canary: its challenger scores the same
batches in shadow, then takes over).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from steward_operator import specs
from steward_operator.evidence.base import ArmCounts
from steward_operator.guardrails import (
    GUARDRAILS,
    Window,
    answered,
    number,
    outcome_words,
    points,
    rate,
    unusable_readings,
)
from steward_operator.sequential import (
    Comparison,
    non_inferiority,
    split_alpha,
)
from steward_operator.stages import ONLINE, Layout, LiveStage, canary_name, first_live, judged_steps, live, shadowed
from steward_operator.validation import Holdouts, compare_holdouts

Action = Literal["continue", "advance", "promote", "rollback", "pause", "hold"]
"""What a decision can be: the values of Analysis.decision."""

DEFAULT_MARGIN = 0.005
"""Non-inferiority margin on the error rate when the errorRate guardrail allows no increase (or is not configured):
half a percentage point. A margin of 0 could only be shown by a challenger credibly better than the incumbent, so
an equally good one would never be promoted."""

# Confidence may be 0.5, but a one-sided bound at alpha = 0.5 would sit on the estimate itself.
_LARGEST_ALPHA = 0.499
_GATE = "errorRateNonInferiority"
_WAIT = "an outage neither promotes nor rolls back, so the release waits until they can be read again"
_UNUSABLE = "a reading that cannot be used is no reading: the release waits until the counts can be used again"


# --- what goes in -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """What the spec asks of a release: the rollout, and the stages its serving mode lays out."""

    rollout: specs.Rollout
    layout: Layout = ONLINE


@dataclass(frozen=True)
class Timing:
    """When the release and the current stage began, and the time the decision is taken at."""

    release_started: datetime
    stage_started: datetime
    now: datetime


# --- what comes out -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A decision, the rule that fired (one sentence with its numbers), and one Evidence per comparison."""

    decision: Action
    rule: str
    evidence: tuple[specs.Evidence, ...] = ()

    def analysis(self, time: datetime, phase: specs.Phase) -> specs.Analysis:
        """This verdict as status records it."""
        return specs.Analysis(time=time, phase=phase, decision=self.decision, rule=self.rule, evidence=[*self.evidence])


def as_evidence(comparison: Comparison) -> specs.Evidence:
    """A sequential comparison as status records it: the fields correspond one to one."""
    return specs.Evidence(
        metric=comparison.metric,
        incumbent=comparison.incumbent,
        challenger=comparison.challenger,
        lower=comparison.lower,
        upper=comparison.upper,
        incumbent_samples=comparison.incumbent_samples,
        challenger_samples=comparison.challenger_samples,
        verdict=comparison.verdict,
    )


# --- the decision -------------------------------------------------------------------------------------------


def decide(
    policy: Policy,
    timing: Timing,
    *,
    phase: specs.Phase,
    step: int | None = None,
    window: Window | None,
    holdouts: Holdouts | None,
    failure: str | None = None,
) -> Verdict:
    """The decision for a release at stage `phase` (and canary `step`), from the evidence gathered so far.

    `window` is the live evidence of Shadowing and Canary, `holdouts` that of Validating; each stage reads only
    its own. None means the metric provider could not be read (MetricsUnavailableError); a result not reported
    yet is a None inside Holdouts. The first rule that applies decides:

    0. The challenger failed on its own (`failure`: a batch run of it could not load its bundle) -> rollback, at
       once, whatever the stage: a version that cannot even start proves nothing by waiting.
    1. A canary step of 100 %: the incumbent answers nothing there, so nothing can be compared; the API refuses
       such a step, and one an older resource still holds is taken as the promotion. After a stage that judged
       the challenger on live traffic (an earlier step, or shadow) -> promote: that stage was the last one, with
       the promotion gate. Without one -> rollback: a challenger is never left serving unjudged.
    2. No data: the stage's evidence is None -> pause. An outage neither promotes nor rolls back, not even once
       the maximum duration has passed: it pauses the release until the metrics can be read again.
    3. Unusable reading: a count the stage needs is not a whole, finite, non-negative number (NaN, inf,
       negative, fractional), errors outnumber requests or slow requests timed ones, the latency buckets are not
       cumulative (a bucket above the next, or above +Inf; +Inf not the timed requests), the versions counted
       slow requests above different thresholds, or the provider reported a reading it could not use -> pause,
       naming the reading. Like an outage, it neither promotes nor rolls back.
    4. Maximum duration: the release has run longer than rollout.maxDuration -> rollback. Without a verdict by
       then the incumbent stays (futility).
    5. Validating, on held-out results: online, without shadow, and the only canary step is 100 % -> rollback
       (no stage could judge the challenger on live traffic). The metric is rollout.validation.metric or, unset,
       the first of rocAuc, accuracy, logLoss (a classifier) or rmse, mae, r2 (a regressor) that both versions
       report. accuracy, rocAuc and r2 are better higher; logLoss, mae and rmse lower. Either version's result not
       known yet (or not a finite number) -> hold. The challenger worse than the incumbent by more than
       validation.tolerance x |incumbent's value| -> rollback; otherwise -> advance. The rule says whether both
       were measured on the same held-out data (equal fingerprints) or across different held-out sets; the
       verdict is the same either way. With validation disabled -> advance: there is nothing to wait for.

    Shadowing and Canary decide on live counts. Each guardrail (errorRate: 5xx among requests, as clients were
    answered: per version the larger of its predictors' counts and its gateway's, which also answers for pods
    that died mid-request or never answered; latency: how much more often a challenger request is slower than an
    incumbent's than not, over both whole latency histograms; slowRequests: requests slower than the threshold
    the caller applied or else the incumbent's p95 latency in the same window, among timed requests;
    predictionShift: total variation between the predictions over all bins at once; in shadow only,
    where the monitor pairs both versions' answers to the same requests, disagreement: the share of them answered
    differently, and pairedAccuracy: on those whose outcome has arrived, the incumbent's accuracy less the
    challenger's; outcome: each version's mean loss on the predictions whose outcomes are due, a gate) is an
    anytime-valid test at its share of alpha = 1 - rollout.confidence (split equally among the
    stage's guardrails, Bonferroni), against its own tolerance. In batch, the challenger's runs compare both
    versions on the same rows: a row is a request, a rejected row an error, and no latency guardrail is judged
    (no row is timed).
    After rules 1 to 4:

    6. Any guardrail credibly worse -> rollback, at once: a credibly worse challenger never waits for the stage's
       minimum evidence.
    7. No traffic: the stage's minimum duration is over and the challenger or the incumbent answered no request
       -> continue: silence is not evidence.
    8. Minimum evidence: fewer challenger requests than the stage's minimum (shadow.minRequests,
       canary.minRequestsPerStep), or less time in the stage than its minimum (shadow.minDuration,
       canary.minStepDuration) -> continue.
    9. A guardrail without data on either version (no latency histogram, no bucket at the incumbent's p95, no
       predictions) -> hold, naming each guardrail and what it waits for: no data is not a pass.
    10. Any stage but the last -> advance. A gate guardrail (outcome) without data holds only the last stage.
    10a. The last stage, a gate guardrail not yet credibly within its tolerance -> continue: the challenger stays
        at its share until its outcomes have matured and it passes, or the maximum duration ends the release.
    11. The last stage (the last canary step below 100 %, or the shadow stage when there is none; the shadow
        stage in batch) is the quality gate: the error rate credibly not worse than the incumbent's + margin
        (non-inferiority at the full alpha; the margin is the errorRate guardrail's tolerance, or DEFAULT_MARGIN
        when that is 0 or there is no such guardrail) -> promote; otherwise -> continue, until the maximum
        duration ends the release.

    Raises ValueError for a phase no release decides in, or a canary stage without a valid step; never for what
    the evidence holds.
    """
    if failure is not None:
        return Verdict("rollback", f"the challenger failed on its own: {failure}")
    if phase == "Validating":
        return _validate(policy, timing, holdouts)
    stage = live(policy.rollout, policy.layout, phase, step)
    if stage.full:
        return _full_step(policy, stage.name)
    if window is None:
        return Verdict("pause", f"metrics are unavailable: the live counts of {stage.name} could not be read; {_WAIT}")
    unusable = unusable_readings(policy.rollout, window.incumbent, window.challenger)
    if unusable:
        return Verdict("pause", f"unusable reading: {'; '.join(unusable)}; {_UNUSABLE}")
    return _watch(policy, stage, timing, window)


# --- Validating ---------------------------------------------------------------------------------------------


def _validate(policy: Policy, timing: Timing, holdouts: Holdouts | None) -> Verdict:
    validation = policy.rollout.validation
    following = first_live(policy.rollout, policy.layout)
    if not shadowed(policy.rollout, policy.layout) and judged_steps(policy.rollout) == 0:
        rule = (
            f"no stage would judge the challenger on live traffic: the only one is {following}, where the incumbent"
            " answers nothing, and there is no shadow stage; it never receives traffic (canary steps must be below"
            " 100%, or add rollout.shadow)"
        )
        return Verdict("rollback", rule)
    if not validation.enabled:
        return Verdict("advance", f"offline validation is disabled (rollout.validation.enabled): on to {following}")
    if holdouts is None:
        return Verdict("pause", f"metrics are unavailable: the held-out results could not be read; {_WAIT}")
    verdict = Verdict(*compare_holdouts(validation, holdouts, following))
    overdue = _overdue(policy, timing)
    if overdue is not None:
        return Verdict("rollback", overdue, verdict.evidence)
    return verdict


# --- Shadowing and Canary -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Check:
    guardrail: specs.Guardrail
    alpha: float
    comparison: Comparison
    waiting: str | None = None
    """Why the comparison has no data, in words; None when it has."""


def _watch(policy: Policy, stage: LiveStage, timing: Timing, window: Window) -> Verdict:
    rollout = policy.rollout
    checks = _guardrails(rollout, window, stage)
    evidence = tuple(as_evidence(check.comparison) for check in checks)
    overdue = _overdue(policy, timing)
    if overdue is not None:
        return Verdict("rollback", overdue, evidence)
    failed = [check for check in checks if check.comparison.credibly_worse]
    if failed:
        return Verdict("rollback", _breach(stage, failed, window), evidence)

    elapsed = max(timing.now - timing.stage_started, timedelta(0))
    collecting = _collecting(stage, elapsed, window)
    if collecting is not None:
        return Verdict("continue", collecting, evidence)

    challenger = window.challenger.requests
    met = f"{stage.name} has its minimum evidence ({challenger:,} challenger requests in {_span(elapsed)})"
    last = stage.following is None
    waiting = [
        f"guardrail {check.guardrail.name} waits for {GUARDRAILS[check.guardrail.name].needs}: {check.waiting}"
        for check in checks
        if check.waiting is not None and (last or not GUARDRAILS[check.guardrail.name].gate)
    ]
    if waiting:
        rule = (
            f"{met}, but {'; '.join(waiting)}; no data is not a pass, so {stage.name} holds until every"
            " guardrail can compare the versions"
        )
        return Verdict("hold", rule, evidence)
    if stage.following is not None:
        return Verdict("advance", f"{met} and no guardrail failed: on to {stage.following}", evidence)
    return _last(rollout, stage, met, checks, window)


def _last(rollout: specs.Rollout, stage: LiveStage, met: str, checks: list[_Check], window: Window) -> Verdict:
    """The last stage, its minimum evidence met and every guardrail with data: promote once every gate guardrail
    passed and the error rate is credibly not worse; else collect more."""
    evidence = tuple(as_evidence(check.comparison) for check in checks)
    unproven = [
        check for check in checks if GUARDRAILS[check.guardrail.name].gate and check.comparison.verdict != "pass"
    ]
    if unproven:
        return Verdict("continue", _unproven(stage, met, unproven[0], window), evidence)
    return _gate(rollout, met, window, evidence)


def _unproven(stage: LiveStage, met: str, check: _Check, window: Window) -> str:
    """Why the last stage keeps the challenger at its share: a gate not yet passed."""
    found = outcome_words(check.comparison, window, "at most", check.comparison.upper)
    return (
        f"{met} and no guardrail failed, but {found}, not yet below the tolerance of"
        f" {number(check.guardrail.tolerance)} at alpha {check.alpha:.3g}: the challenger stays at its share in"
        f" {stage.name} until it is credibly no worse, or rollout.maxDuration ends the release"
    )


def _collecting(stage: LiveStage, elapsed: timedelta, window: Window) -> str | None:
    """The rule while the stage still collects its minimum evidence, or a version answers nothing; else None."""
    silent = _silent(window)
    if silent and elapsed >= stage.min_duration:
        return (
            f"no traffic: {silent} answered no requests in {_span(elapsed)} of {stage.name};"
            " silence is not evidence, so the stage goes on"
        )
    short = []
    challenger = window.challenger.requests
    if challenger < stage.min_requests:
        short.append(f"{challenger:,} of {stage.min_requests:,} challenger requests")
    if elapsed < stage.min_duration:
        short.append(f"{_span(elapsed)} of {_span(stage.min_duration)}")
    return f"collecting evidence in {stage.name}: {' and '.join(short)} so far" if short else None


def _silent(window: Window, requests: Callable[[ArmCounts], int] = lambda counts: counts.requests) -> str | None:
    """The versions that answered no requests, in words; None when both answered some."""
    silent = [
        arm
        for arm, counts in (("challenger", window.challenger), ("incumbent", window.incumbent))
        if not requests(counts)
    ]
    return f"the {' and the '.join(silent)}" if silent else None


def _guardrails(rollout: specs.Rollout, window: Window, stage: LiveStage) -> list[_Check]:
    """The stage's guardrails, each at its share of alpha: those on paired answers only where there are pairs, those
    on latency only where answers are timed."""
    judged = [
        guardrail
        for guardrail in rollout.guardrails
        if (stage.paired or not GUARDRAILS[guardrail.name].paired)
        and (stage.timed or not GUARDRAILS[guardrail.name].timed)
    ]
    if not judged:
        return []
    alphas = split_alpha(_alpha(rollout), [guardrail.name for guardrail in judged])
    checks = []
    for guardrail in judged:
        alpha = alphas[guardrail.name]
        comparison, waiting = GUARDRAILS[guardrail.name].compare(window, guardrail.tolerance, alpha)
        checks.append(_Check(guardrail, alpha, comparison, waiting if comparison.verdict == "noData" else None))
    return checks


def _gate(rollout: specs.Rollout, met: str, window: Window, evidence: tuple[specs.Evidence, ...]) -> Verdict:
    """The last stage: promote only once the error rate is credibly not worse than the incumbent's + margin."""
    tolerance = next((guardrail.tolerance for guardrail in rollout.guardrails if guardrail.name == "errorRate"), 0.0)
    margin = tolerance or DEFAULT_MARGIN
    source = "the errorRate guardrail's tolerance" if tolerance else "the default, as errorRate allows no increase"
    incumbent, challenger = window.incumbent, window.challenger
    alpha = _alpha(rollout)
    gate = non_inferiority(_GATE, *answered(incumbent), *answered(challenger), margin=margin, alpha=alpha)
    evidence = (*evidence, as_evidence(gate))
    upper = "no bound" if gate.upper is None else f"at most {points(gate.upper)}"
    rates = f"{rate(gate.challenger)} against {rate(gate.incumbent)}"
    if gate.credibly_not_worse:
        rule = (
            f"{met}, no guardrail failed, and the challenger's error rate is credibly not worse: {rates}, an"
            f" increase of {upper}, below the margin of {points(margin)} ({source}) at alpha {alpha:.3g}: promote"
        )
        return Verdict("promote", rule, evidence)
    rule = (
        f"{met} and no guardrail failed, but the challenger's error rate is not yet credibly not worse: {rates},"
        f" an increase of {upper}, not below the margin of {points(margin)} ({source}) at alpha {alpha:.3g};"
        " collecting more until rollout.maxDuration"
    )
    return Verdict("continue", rule, evidence)


def _breach(stage: LiveStage, failed: list[_Check], window: Window) -> str:
    first = failed[0]
    guardrail = first.guardrail
    what = GUARDRAILS[guardrail.name].breach(first.comparison, guardrail.tolerance, window)
    also = "".join(f"; {check.guardrail.name} failed too" for check in failed[1:])
    return f"guardrail {guardrail.name} failed in {stage.name}: {what} at alpha {first.alpha:.3g}{also}; roll back"


# --- shared pieces ------------------------------------------------------------------------------------------


def _full_step(policy: Policy, name: str) -> Verdict:
    """A canary step of 100 %: the incumbent answers nothing, so it is the promotion, judged by the stage before."""
    judged = judged_steps(policy.rollout)
    layout = policy.layout
    before = (
        canary_name(policy.rollout, judged - 1) if judged else "shadow" if shadowed(policy.rollout, layout) else None
    )
    if before is not None:
        rule = (
            f"{name} gives the challenger all traffic, as promotion does, and leaves the incumbent none to compare"
            f" with: it was judged up to {before}, the last stage where both answered; promote"
        )
        return Verdict("promote", rule)
    rule = (
        f"{name} leaves the incumbent no traffic, and no earlier stage compared the challenger with it on live"
        " traffic: it cannot be judged, so it is rolled back and the incumbent stays (canary steps must be below"
        " 100%, or add rollout.shadow)"
    )
    return Verdict("rollback", rule)


def _overdue(policy: Policy, timing: Timing) -> str | None:
    """The rule when the release has run out of time, else None."""
    longest = policy.rollout.max_duration
    taken = timing.now - timing.release_started
    if taken <= specs.as_timedelta(longest):
        return None
    return (
        f"the release has run {_span(taken)}, longer than rollout.maxDuration ({longest}), without a verdict:"
        " roll back, the incumbent stays"
    )


def _alpha(rollout: specs.Rollout) -> float:
    # 1 - 0.95 is 0.050000000000000044 in binary: rounding keeps alpha the number the spec means.
    return min(round(1 - rollout.confidence, 12), _LARGEST_ALPHA)


def _span(duration: timedelta) -> str:
    """A duration as the spec writes one: 1h30m, 15m, 45s."""
    seconds = max(int(duration.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if value]
    return "".join(parts) or "0s"
