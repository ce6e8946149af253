"""The release decision driven the way the release tests drive it: a rollout as a manifest writes it, the policies of
online, shadowed and batch serving, each version's counts, and `decide` called for a live stage or for validation on
held-out results."""

from __future__ import annotations

import math
import typing
from datetime import UTC, datetime, timedelta
from statistics import NormalDist

from steward_operator import specs
from steward_operator.deciding import Action, Policy, Timing, Verdict, decide
from steward_operator.evidence.base import ArmCounts
from steward_operator.guardrails import Window
from steward_operator.modes.batch import Batch
from steward_operator.validation import HeldOut, Holdouts
from steward_predictor.metrics import LATENCY_BUCKETS

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
ACTIONS = typing.get_args(Action)


def rollout(**fields: object) -> specs.Rollout:
    """A rollout as a manifest writes it (camelCase), defaults elsewhere: no shadow, canary 5/25/50, errorRate
    and slowRequests guardrails (tolerance 0 each), confidence 0.95, maxDuration 24h."""
    return specs.Rollout.model_validate(fields)


ONLINE = Policy(rollout())
SHADOWED = Policy(rollout(shadow={}))
BATCH = Policy(rollout(), Batch.layout)


def timing(in_stage: timedelta = timedelta(minutes=30), in_release: timedelta = timedelta(hours=2)) -> Timing:
    return Timing(release_started=NOW - in_release, stage_started=NOW - in_stage, now=NOW)


def arm(
    requests: int,
    errors: int = 0,
    slow: int | None = None,
    predictions: dict[str, int] | None = None,
    slow_after: float | None = 0.25,
) -> ArmCounts:
    """One version's counts: every request timed, 5% slower than the threshold unless told."""
    return ArmCounts(
        requests=requests,
        errors=errors,
        timed=requests,
        slow=requests // 20 if slow is None else slow,
        slow_after=slow_after,
        predictions=predictions or {},
    )


def alike(incumbent: int, challenger: int, error_rate: float = 0.01) -> Window:
    """Both versions at the same error rate and the same share of slow requests."""
    return Window(arm(incumbent, round(incumbent * error_rate)), arm(challenger, round(challenger * error_rate)))


def live(
    window: Window | None,
    phase: specs.Phase = "Canary",
    step: int | None = 0,
    policy: Policy = ONLINE,
    when: Timing | None = None,
) -> Verdict:
    return decide(policy, when or timing(), phase=phase, step=step, window=window, holdouts=None)


def held_out(**metrics: float) -> HeldOut:
    return HeldOut(metrics, "sha256:abc")


def validate(
    incumbent: HeldOut | None,
    challenger: HeldOut | None,
    policy: Policy = ONLINE,
    when: Timing | None = None,
) -> Verdict:
    holdouts = Holdouts(incumbent, challenger)
    return decide(policy, when or timing(), phase="Validating", window=None, holdouts=holdouts)


def evidence_of(verdict: Verdict, metric: str) -> specs.Evidence:
    (found,) = [evidence for evidence in verdict.evidence if evidence.metric == metric]
    return found


def lognormal_latency(requests: int, p95: float, slower: float = 1.0, sigma: float = 0.5) -> ArmCounts:
    """One version's expected counts when its latency is log-normal with the given p95 (times `slower`), in the
    predictor's latency buckets, every request timed."""
    normal = NormalDist()
    median = p95 * slower / math.exp(normal.inv_cdf(0.95) * sigma)
    latency = {
        bound: round(requests * normal.cdf(math.log(bound / median) / sigma)) if math.isfinite(bound) else requests
        for bound in (*LATENCY_BUCKETS, math.inf)
    }
    return ArmCounts(requests=requests, timed=requests, latency=latency)
