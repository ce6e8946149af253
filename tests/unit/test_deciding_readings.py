"""What the release decision makes of any reading: one it cannot use pauses the release and is named, never raising out
of the reconcile; any counts get a verdict with a rule; A/A counts never roll back; and seeded looks at A/A releases
show that checking after every scrape does not roll good challengers back."""

from __future__ import annotations

import math
import typing
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steward_operator import specs
from steward_operator.deciding import Policy
from steward_operator.evidence.base import ArmCounts
from steward_operator.guardrails import Window
from steward_operator.validation import HeldOut
from steward_predictor.metrics import LATENCY_BUCKETS
from tests.support.decisions import ACTIONS, SHADOWED, arm, held_out, live, lognormal_latency, rollout, timing, validate

RELEASES = 200


def rollbacks_after_every_scrape(challenger_rate: float) -> int:
    """Seeded releases of a 5% canary step against an incumbent at 2% errors, decided after each of 40 scrapes of
    100 challenger requests; how many were rolled back at any look."""
    rng = np.random.default_rng(20240601)
    looks, per_scrape = 40, 100
    incumbent = np.cumsum(rng.binomial(per_scrape * 19, 0.02, (RELEASES, looks)), axis=1)
    challenger = np.cumsum(rng.binomial(per_scrape, challenger_rate, (RELEASES, looks)), axis=1)
    policy = Policy(rollout(guardrails=[{"name": "errorRate"}]))
    rolled_back = 0
    for release in range(RELEASES):
        for look in range(looks):
            served = (look + 1) * per_scrape
            window = Window(
                arm(served * 19, int(incumbent[release, look])), arm(served, int(challenger[release, look]))
            )
            if live(window, step=0, policy=policy).decision == "rollback":
                rolled_back += 1
                break
    return rolled_back


class TestProperties:
    @given(
        rates=st.tuples(st.floats(0.001, 0.3), st.floats(0.0, 0.3)),
        requests=st.tuples(st.integers(10_000, 2_000_000), st.integers(10_000, 2_000_000)),
        step=st.integers(0, 2),
        shares=st.lists(st.integers(1, 100), min_size=2, max_size=10),
    )
    @settings(derandomize=True, max_examples=200, deadline=None)
    def test_aa_counts_never_roll_back(
        self, rates: tuple[float, float], requests: tuple[int, int], step: int, shares: list[int]
    ) -> None:
        # Both versions at the same rates and the same prediction distribution, up to rounding to whole requests.
        policy = Policy(
            rollout(guardrails=[{"name": "errorRate"}, {"name": "slowRequests"}, {"name": "predictionShift"}])
        )

        error_rate, slow_rate = rates

        def counts(served: int) -> ArmCounts:
            total = sum(shares)
            predictions = {f"bin{index}": served * share // total for index, share in enumerate(shares)}
            return arm(served, round(served * error_rate), round(served * slow_rate), predictions)

        incumbent, challenger = (counts(served) for served in requests)
        verdict = live(Window(incumbent, challenger), step=step, policy=policy)
        assert verdict.decision in {"advance", "promote", "continue"}

    def test_looking_after_every_scrape_rarely_rolls_back_an_equal_challenger(self) -> None:
        assert rollbacks_after_every_scrape(challenger_rate=0.02) <= 0.05 * RELEASES

    def test_looking_after_every_scrape_catches_a_tripled_error_rate(self) -> None:
        assert rollbacks_after_every_scrape(challenger_rate=0.06) >= 0.9 * RELEASES

    @given(
        phase_step=st.sampled_from([("Shadowing", None), ("Canary", 0), ("Canary", 1), ("Canary", 2)]),
        counts=st.tuples(*[st.integers(0, 5_000)] * 4),
        in_stage=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=30)),
    )
    @settings(derandomize=True, max_examples=200, deadline=None)
    def test_any_counts_get_a_verdict_with_a_rule(
        self, phase_step: tuple[specs.Phase, int | None], counts: tuple[int, int, int, int], in_stage: timedelta
    ) -> None:
        requests_i, errors_i, requests_c, errors_c = counts
        window = Window(arm(requests_i, min(errors_i, requests_i)), arm(requests_c, min(errors_c, requests_c)))
        phase, step = phase_step
        first = live(window, phase, step, SHADOWED, timing(in_stage, in_stage))
        assert first.decision in ACTIONS
        assert first.rule
        assert live(window, phase, step, SHADOWED, timing(in_stage, in_stage)) == first


def hostile_number() -> st.SearchStrategy[float]:
    """Counts as a broken exporter or a confused query could give them."""
    return st.one_of(
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([math.nan, math.inf, -math.inf, -1, 0.5, 2**53 + 1, 10**400]),
    )


@st.composite
def plausible(draw: st.DrawFn) -> ArmCounts:
    """Counts one version could really serve: errors among requests, cumulative latency buckets up to +Inf."""
    requests = draw(st.integers(0, 50_000))
    timed = draw(st.sampled_from([0, requests]))
    latency: dict[float, int] = {}
    if draw(st.booleans()):
        cumulative = sorted(draw(st.lists(st.integers(0, timed), min_size=len(LATENCY_BUCKETS), max_size=13)))
        latency = {**dict(zip(LATENCY_BUCKETS, cumulative, strict=True)), math.inf: timed}
    return ArmCounts(
        requests=requests,
        errors=draw(st.integers(0, requests)),
        timed=timed,
        slow=draw(st.integers(0, timed)),
        slow_after=draw(st.sampled_from([None, 0.25])),
        latency=latency,
        predictions=draw(st.dictionaries(st.sampled_from(["0", "1", "2"]), st.integers(0, 10_000), max_size=3)),
    )


def spoilers(counts: ArmCounts) -> st.SearchStrategy[dict[str, typing.Any]]:
    """Ways one reading of `counts` can be spoilt, as a broken exporter or query would spoil it; {} leaves it."""
    latency, bounds = counts.latency, sorted(counts.latency)
    ways: list[st.SearchStrategy[dict[str, typing.Any]]] = [
        st.just({}),
        st.sampled_from(["requests", "errors", "timed", "slow"]).flatmap(
            lambda name: hostile_number().map(lambda value: {name: value})
        ),
        st.integers(1, 10).map(lambda extra: {"errors": counts.requests + extra}),
        st.sampled_from([math.nan, -1.0, 0.5, math.inf]).map(lambda threshold: {"slow_after": threshold}),
        hostile_number().map(lambda value: {"predictions": {**counts.predictions, "1": value}}),
        st.sampled_from(["requests", "latency", "predictions", "scores"]).map(
            lambda name: {"unusable": {name: "a sample of NaN"}}
        ),
    ]
    if bounds:
        ways += [
            st.tuples(st.sampled_from(bounds), hostile_number()).map(
                lambda spoilt: {"latency": {**latency, **dict([spoilt])}}
            ),
            st.just({"latency": {bound: value for bound, value in latency.items() if bound != math.inf}}),
            st.just({"latency": {**latency, math.nan: 0}}),
        ]
    if len(bounds) > 2:
        # The lowest bucket above the highest finite one: not cumulative.
        ways.append(st.just({"latency": {**latency, bounds[0]: latency[bounds[-2]] + 1}}))
    return st.one_of(ways)


def readings() -> st.SearchStrategy[ArmCounts]:
    """Plausible counts, often with one reading spoilt."""
    return plausible().flatmap(lambda counts: spoilers(counts).map(lambda changes: replace(counts, **changes)))


def is_count(value: object) -> bool:
    """What the engine may count with: a whole, finite, non-negative number a float holds exactly."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and value >= 0 and value == int(value) and value <= 2**53
    except OverflowError:
        return False


def usable(counts: ArmCounts, guardrails: set[str]) -> bool:
    """An oracle written apart from the engine: whether the readings the guardrails need can be used."""
    needed = {"requests"}
    if "slowRequests" in guardrails:
        needed.add("latency")
    if "predictionShift" in guardrails:
        needed.add("predictions")
    requests = is_count(counts.requests) and is_count(counts.errors) and counts.errors <= counts.requests
    latency = "slowRequests" not in guardrails or latency_usable(counts)
    predictions = "predictionShift" not in guardrails or all(map(is_count, counts.predictions.values()))
    return not needed & set(counts.unusable) and requests and latency and predictions


def latency_usable(counts: ArmCounts) -> bool:
    """Timed requests are a count, slow ones too where counted, and the latency buckets are cumulative up to +Inf,
    which holds every timed request."""
    if not is_count(counts.timed):
        return False
    slow = counts.slow_after is None or (
        is_count(counts.slow) and counts.slow <= counts.timed and counts.slow_after >= 0
    )
    if not counts.latency:
        return slow
    if any(math.isnan(bound) for bound in counts.latency) or not all(map(is_count, counts.latency.values())):
        return False
    cumulative = [counts.latency[bound] for bound in sorted(counts.latency)]
    return slow and cumulative == sorted(cumulative) and counts.latency.get(math.inf) == counts.timed


def comparable(incumbent: ArmCounts, challenger: ArmCounts, guardrails: set[str]) -> bool:
    """Both versions' readings can be used, and slow requests, where both counted them, at one threshold."""
    thresholds = {incumbent.slow_after, challenger.slow_after}
    same_threshold = "slowRequests" not in guardrails or None in thresholds or len(thresholds) == 1
    return usable(incumbent, guardrails) and usable(challenger, guardrails) and same_threshold


class TestUnusableReadings:
    """A reading the engine cannot use pauses the release and names the reading: it never raises out of the
    reconcile, and never advances or promotes."""

    @pytest.mark.parametrize(
        ("incumbent", "challenger", "named"),
        [
            (arm(10_000, errors=100), arm(10_000, errors=math.nan), "the challenger's errors (nan) are not a number"),  # type: ignore[arg-type]
            (
                arm(10_000, errors=100),
                arm(1_000, errors=1_200),
                "the challenger's errors (1,200) outnumber its requests (1,000)",
            ),
            (arm(-5), arm(1_000), "the incumbent's requests (-5) are negative"),
            (arm(10_000, errors=100), arm(10_000, errors=math.inf), "the challenger's errors (inf) are not finite"),  # type: ignore[arg-type]
            (arm(10_000), arm(1_000.5), "the challenger's requests (1,000.5) are not a whole number"),  # type: ignore[arg-type]
            (arm(10**30), arm(1_000), "the incumbent's requests (1e+30) are too many to count exactly"),
            (
                arm(10_000, slow=11_000),
                arm(1_000),
                "the incumbent's slow requests (11,000) outnumber its timed requests",
            ),
        ],
    )
    def test_a_count_that_cannot_be_used_pauses_and_is_named(
        self, incumbent: ArmCounts, challenger: ArmCounts, named: str
    ) -> None:
        verdict = live(Window(incumbent, challenger), step=2)
        assert verdict.decision == "pause"
        assert verdict.rule.startswith("unusable reading:")
        assert named in verdict.rule

    def test_a_nan_error_count_used_to_advance(self) -> None:
        verdict = live(Window(arm(20_000, errors=200), arm(1_000, errors=math.nan)))  # type: ignore[arg-type]
        assert verdict.decision == "pause"

    @pytest.mark.parametrize(
        ("latency", "named"),
        [
            ({0.05: 9_600, 0.1: 9_900, math.inf: 9_000}, "the incumbent's latency bucket le=0.1 (9,900) is above"),
            ({0.05: 9_600, 0.1: 9_500, math.inf: 10_000}, "the incumbent's latency bucket le=0.05 (9,600) is above"),
            ({0.05: 9_600, 0.1: 9_900}, "the incumbent's latency has no +Inf bucket"),
            ({0.05: 9_600, math.inf: 9_999}, "the incumbent's +Inf latency bucket (9,999) disagrees"),
            ({math.nan: 9_600, math.inf: 10_000}, "the incumbent's latency has a bucket boundary that is not a number"),
            ({0.05: -1, math.inf: 10_000}, "the incumbent's latency bucket le=0.05 (-1) is negative"),
        ],
    )
    def test_a_latency_histogram_that_cannot_be_used_pauses_and_is_named(
        self, latency: dict[float, int], named: str
    ) -> None:
        incumbent = ArmCounts(requests=10_000, timed=10_000, latency=latency)
        verdict = live(Window(incumbent, lognormal_latency(1_000, p95=0.04)))
        assert verdict.decision == "pause"
        assert named in verdict.rule

    def test_a_broken_histogram_no_guardrail_reads_changes_nothing(self) -> None:
        policy = Policy(rollout(guardrails=[{"name": "errorRate"}]))
        broken = ArmCounts(requests=20_000, errors=200, timed=10_000, latency={0.05: 9_600, math.inf: 10})
        assert live(Window(broken, arm(1_000, errors=10)), policy=policy).decision == "advance"

    def test_what_the_provider_could_not_read_pauses_and_is_named(self) -> None:
        challenger = replace(arm(1_000), unusable={"requests": "a sample of NaN in steward_predictor_requests_total"})
        verdict = live(Window(arm(20_000), challenger))
        assert verdict.decision == "pause"
        assert "the challenger's requests: a sample of NaN in steward_predictor_requests_total" in verdict.rule

    def test_readings_at_different_slow_thresholds_cannot_be_compared(self) -> None:
        verdict = live(Window(arm(20_000, slow_after=0.25), arm(1_000, slow_after=0.5)))
        assert verdict.decision == "pause"
        assert "slow requests above different thresholds (0.25 s and 0.5 s)" in verdict.rule

    def test_an_unusable_reading_waits_even_past_the_maximum_duration(self) -> None:
        # Like an outage: a reading that cannot be used is no reading, and no reading never rolls back by itself.
        overdue = timing(in_release=timedelta(hours=48))
        verdict = live(Window(arm(20_000), arm(1_000, errors=2_000)), when=overdue)
        assert verdict.decision == "pause"

    @pytest.mark.parametrize("value", [math.nan, math.inf, "0.9", None, 10**400])
    def test_a_held_out_result_that_is_not_a_number_is_not_reported(self, value: object) -> None:
        verdict = validate(held_out(rocAuc=0.9), HeldOut({"rocAuc": value}, "d"))  # type: ignore[dict-item]
        assert verdict.decision == "hold"
        assert "the challenger has not reported rocAuc" in verdict.rule

    @given(
        incumbent=readings(),
        challenger=readings(),
        stage=st.sampled_from([("Shadowing", None), ("Canary", 0), ("Canary", 1), ("Canary", 2)]),
        guardrails=st.sets(st.sampled_from(["errorRate", "slowRequests", "predictionShift"])),
        tolerance=st.sampled_from([0.0, 0.01, 0.2]),
        in_stage=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=30)),
    )
    @settings(derandomize=True, max_examples=300, deadline=None)
    def test_any_reading_gets_a_verdict_and_an_unusable_one_never_moves_the_release_on(
        self,
        *,
        incumbent: ArmCounts,
        challenger: ArmCounts,
        stage: tuple[specs.Phase, int | None],
        guardrails: set[str],
        tolerance: float,
        in_stage: timedelta,
    ) -> None:
        policy = Policy(
            rollout(shadow={}, guardrails=[{"name": name, "tolerance": tolerance} for name in sorted(guardrails)])
        )
        phase, step = stage
        verdict = live(Window(incumbent, challenger), phase, step, policy, timing(in_stage, in_stage))
        assert verdict.decision in ACTIONS
        assert verdict.rule
        if not comparable(incumbent, challenger, guardrails):
            assert verdict.decision == "pause"
            assert verdict.rule.startswith("unusable reading:")
        else:
            assert not verdict.rule.startswith("unusable reading:")
