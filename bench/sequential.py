"""Simulation study of the rollback statistics: how often Steward's anytime-valid guardrail rolls back a challenger
that is no worse (A/A), and how many requests it needs to roll back one that is (1% -> 2% errors), side by side
with the threshold check Flagger and Argo Rollouts make, on the very same synthetic request streams; then the
slowRequests guardrail on log-normal latencies in the predictor's own histogram buckets, at the old default
tolerance (0.05) and the new one (0), for a challenger 30 % and 50 % slower and for one as fast (A/A).

Every method looks after every batch of requests, as an operator reading Prometheus after every scrape would.
Run: .venv/bin/python bench/sequential.py   (exits non-zero when a goal is missed)

Goals: the sequential guardrail's A/A false-rollback rate is at most alpha, and its median number of requests per
arm to roll back 1% -> 2% is within 1.5x the fixed-horizon sample size (one look, two-sided alpha, power 0.8);
slowRequests at its default tolerance keeps A/A false rollbacks within its share of alpha and rolls back a
challenger 30 % slower in at least 80 % of streams within the budget."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from steward_operator import specs
from steward_operator.sequential import (
    RELEVANT_RATE_INCREASE,
    ThresholdRule,
    difference_bounds,
    first_alarm,
    split_alpha,
)
from steward_predictor.metrics import LATENCY_BUCKETS

Alarms = Callable[["Streams"], NDArray[np.bool_]]


@dataclass(frozen=True)
class Streams:
    """Cumulative counts after each look (rows: streams, columns: looks)."""

    incumbent_errors: NDArray[np.int64]
    incumbent_requests: NDArray[np.int64]
    challenger_errors: NDArray[np.int64]
    challenger_requests: NDArray[np.int64]


@dataclass(frozen=True)
class Scenario:
    name: str
    incumbent_rate: float
    challenger_rate: float
    incumbent_batch: int
    challenger_batch: int

    @property
    def null(self) -> bool:
        return self.challenger_rate <= self.incumbent_rate


@dataclass(frozen=True)
class LatencyScenario:
    name: str
    slower: float
    """The challenger's latency over the incumbent's: 1.3 is 30 % slower at every quantile."""
    incumbent_batch: int
    challenger_batch: int
    p95: tuple[float, float] = (0.01, 0.1)
    """The range the incumbent's p95 latency (seconds) is drawn from, log-uniformly: over a decade, where it falls
    between the predictor's bucket boundaries (1, 2.5, 5 per decade) varies as it does between real models."""

    @property
    def null(self) -> bool:
        return self.slower <= 1


@dataclass(frozen=True)
class Row:
    scenario: Scenario | LatencyScenario
    method: str
    rolled_back: float
    median: float
    p90: float


def simulate(scenario: Scenario, streams: int, looks: int, rng: np.random.Generator) -> Streams:
    shape = (streams, looks)
    steps = np.arange(1, looks + 1, dtype=np.int64)
    return Streams(
        np.cumsum(rng.binomial(scenario.incumbent_batch, scenario.incumbent_rate, shape), axis=1),
        np.broadcast_to(scenario.incumbent_batch * steps, shape),
        np.cumsum(rng.binomial(scenario.challenger_batch, scenario.challenger_rate, shape), axis=1),
        np.broadcast_to(scenario.challenger_batch * steps, shape),
    )


def sequential(alpha: float, effect: float, tolerance: float) -> Alarms:
    def alarms(streams: Streams) -> NDArray[np.bool_]:
        lower, _ = difference_bounds(
            streams.incumbent_errors,
            streams.incumbent_requests,
            streams.challenger_errors,
            streams.challenger_requests,
            alpha=alpha,
            effect=effect,
        )
        flags: NDArray[np.bool_] = lower > tolerance
        return flags

    return alarms


def threshold(rule: ThresholdRule) -> Alarms:
    # The point estimates of everything seen so far: the most charitable reading of a threshold check, since
    # per-interval estimates (rate over the last minute) are noisier still.
    def alarms(streams: Streams) -> NDArray[np.bool_]:
        return rule.breached(
            streams.incumbent_errors / streams.incumbent_requests,
            streams.challenger_errors / streams.challenger_requests,
        )

    return alarms


def quantile(values: NDArray[np.float64], q: float) -> float:
    """The q-quantile by rank, without interpolating across streams that never rolled back (infinite)."""
    ordered = np.sort(values)
    return float(ordered[max(0, math.ceil(q * ordered.size) - 1)])


def fixed_horizon(p1: float, p2: float, alpha: float, power: float) -> int:
    """Requests per arm for one look at the end: two-sided alpha, normal approximation with pooled null variance."""
    normal = NormalDist()
    pooled = (p1 + p2) / 2
    under_null = normal.inv_cdf(1 - alpha / 2) * math.sqrt(2 * pooled * (1 - pooled))
    under_alternative = normal.inv_cdf(power) * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(((under_null + under_alternative) / (p2 - p1)) ** 2)


def evaluate(scenario: Scenario, method: str, alarms: Alarms, streams: Streams) -> Row:
    fired = first_alarm(alarms(streams), consecutive=1)
    requests = np.where(fired >= 0, (fired + 1).astype(np.float64) * scenario.challenger_batch, np.inf)
    return Row(scenario, method, float(np.mean(fired >= 0)), quantile(requests, 0.5), quantile(requests, 0.9))


def consecutive(alarms: Alarms, count: int) -> Alarms:
    """The same alarms, raised only once `count` looks in a row breached."""

    def sustained(streams: Streams) -> NDArray[np.bool_]:
        breaches = alarms(streams)
        completed = first_alarm(breaches, consecutive=count)
        flags = np.zeros_like(breaches)
        rows = np.flatnonzero(completed >= 0)
        flags[rows, completed[rows]] = True
        return flags

    return sustained


# --- slowRequests on latency histograms -------------------------------------------------------------------------

OLD_SLOW_TOLERANCE = 0.05
"""slowRequests' default tolerance before: a +30 % latency regression never breaches it."""
_Z95 = NormalDist().inv_cdf(0.95)
_normal_cdf = np.vectorize(NormalDist().cdf, otypes=[np.float64])


def bucket_shares(p95: NDArray[np.float64], slower: float, sigma: float) -> NDArray[np.float64]:
    """Each stream's share of requests per latency bucket (the predictor's, then +Inf) for a log-normal latency
    with spread `sigma` whose p95 is `p95` times `slower`."""
    bounds = np.asarray(LATENCY_BUCKETS, dtype=np.float64)
    median = p95 * slower / math.exp(_Z95 * sigma)
    below = _normal_cdf(np.log(bounds[None, :] / median[:, None]) / sigma)
    cumulative = np.concatenate([below, np.ones((p95.size, 1))], axis=1)
    shares: NDArray[np.float64] = np.diff(cumulative, axis=1, prepend=0.0)
    return np.clip(shares, 0.0, 1.0)


def slow_alarms(
    scenario: LatencyScenario,
    tolerances: list[float],
    *,
    streams: int,
    looks: int,
    sigma: float,
    alpha: float,
    rng: np.random.Generator,
) -> dict[float, NDArray[np.int64]]:
    """The look at which slowRequests first fails at each tolerance, per stream (-1: never), deciding as the
    engine does after every look: the threshold is the incumbent's p95 bucket in the cumulative window
    (deciding.slow_threshold), the slow requests of both versions are those above it, compared with compare_rates'
    confidence sequence; no threshold but +Inf is no data, never a failure."""
    fired = {tolerance: np.full(streams, -1, dtype=np.int64) for tolerance in tolerances}
    chunk = 1_000  # streams at a time, so the looks x buckets arrays stay small
    for first in range(0, streams, chunk):
        count = min(chunk, streams - first)
        low, high = scenario.p95
        p95 = np.exp(rng.uniform(math.log(low), math.log(high), count))
        counts_i = _cumulative(
            rng.multinomial(scenario.incumbent_batch, bucket_shares(p95, 1.0, sigma), (looks, count))
        )
        counts_c = _cumulative(
            rng.multinomial(scenario.challenger_batch, bucket_shares(p95, scenario.slower, sigma), (looks, count))
        )
        timed_i, timed_c = counts_i[..., -1], counts_c[..., -1]
        threshold = np.argmax(counts_i >= 0.95 * timed_i[..., None], axis=-1)
        within_i = np.take_along_axis(counts_i, threshold[..., None], axis=-1)[..., 0]
        within_c = np.take_along_axis(counts_c, threshold[..., None], axis=-1)[..., 0]
        lower, _ = difference_bounds(timed_i - within_i, timed_i, timed_c - within_c, timed_c, alpha=alpha)
        judged = threshold < counts_i.shape[-1] - 1
        for tolerance in tolerances:
            fired[tolerance][first : first + count] = first_alarm((judged & (lower > tolerance)).T)
    return fired


def _cumulative(per_look: NDArray[np.int64]) -> NDArray[np.int64]:
    """Requests at or under each bucket boundary, in the window up to each look (looks x streams x buckets)."""
    counts: NDArray[np.int64] = np.cumsum(np.cumsum(per_look, axis=0), axis=-1)
    return counts


def latency_row(scenario: LatencyScenario, method: str, fired: NDArray[np.int64]) -> Row:
    requests = np.where(fired >= 0, (fired + 1).astype(np.float64) * scenario.challenger_batch, np.inf)
    return Row(scenario, method, float(np.mean(fired >= 0)), quantile(requests, 0.5), quantile(requests, 0.9))


def table(rows: list[Row], budget: int) -> str:
    def requests(value: float) -> str:
        return f">{budget:,}" if math.isinf(value) else f"{value:,.0f}"

    header = ("scenario", "method", "false rollback %", "median n to rollback", "p90 n", "detected in budget %")
    lines = [
        (
            row.scenario.name,
            row.method,
            f"{100 * row.rolled_back:.1f}" if row.scenario.null else "-",
            requests(row.median),
            requests(row.p90),
            "-" if row.scenario.null else f"{100 * row.rolled_back:.1f}",
        )
        for row in rows
    ]
    widths = [max(len(cells[column]) for cells in [header, *lines]) for column in range(len(header))]
    rendered = [
        "  ".join(
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        for cells in [header, *lines]
    ]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


Goal = tuple[str, bool]


def error_rate_study(args: argparse.Namespace, rng: np.random.Generator) -> list[Goal]:
    """The errorRate guardrail against threshold checks, on Bernoulli request streams."""
    looks = args.budget // args.batch
    base, worse, alpha = args.baseline, args.worse, args.alpha
    scenarios = [
        Scenario(f"A/A {base:.0%} vs {base:.0%}", base, base, args.batch, args.batch),
        Scenario(f"{base:.0%} -> {worse:.0%}", base, worse, args.batch, args.batch),
        Scenario(f"A/A {base:.0%} vs {base:.0%}, 10% canary step", base, base, 9 * args.batch, args.batch),
    ]
    margin, ratio = 0.005, 1.5
    sequential_methods: list[tuple[str, Alarms]] = [
        (f"sequential, tau for +{RELEVANT_RATE_INCREASE:.1%} (default)", sequential(alpha, RELEVANT_RATE_INCREASE, 0)),
        ("sequential, tau for +0.5% (sensitivity)", sequential(alpha, 0.005, 0)),
        ("sequential, tau for +2.0% (sensitivity)", sequential(alpha, 0.02, 0)),
    ]
    threshold_methods: list[tuple[str, Alarms]] = []
    rules = {
        f"> incumbent + {margin:.1%}": ThresholdRule(margin=margin),
        f"> {ratio} x incumbent": ThresholdRule(margin=None, ratio=ratio),
    }
    for label, rule in rules.items():
        threshold_methods.append((f"threshold {label}", threshold(rule)))
        threshold_methods.append((f"threshold {label}, 3 in a row", consecutive(threshold(rule), 3)))

    rows: list[Row] = []
    for scenario in scenarios:
        print(f"{scenario.name}: simulating {args.streams:,} streams x {looks} looks", file=sys.stderr)
        streams = simulate(scenario, args.streams, looks, rng)
        for method, alarms in sequential_methods + threshold_methods:
            tick = time.perf_counter()
            rows.append(evaluate(scenario, method, alarms, streams))
            print(f"  {method}: {time.perf_counter() - tick:.1f} s", file=sys.stderr)

    needed = fixed_horizon(base, worse, alpha, 0.8)
    print(
        f"\nerrorRate: looks after every {args.batch} requests per arm, up to {args.budget:,} per arm; alpha = {alpha}"
    )
    print(
        f"fixed-horizon sample size for {base:.0%} -> {worse:.0%} (one look, two-sided alpha = {alpha}, power 0.8): "
        f"{needed:,} requests per arm\n"
    )
    print(table(rows, args.budget))
    print(
        "\nn counts the challenger's requests (in the canary step the incumbent serves nine for each of them);"
        f" '>{args.budget:,}' where fewer than that share of streams rolled back within the budget.\n"
        "Threshold rows compare the point estimates of everything seen so far, at every look."
    )

    default = sequential_methods[0][0]
    false_rates = [row.rolled_back for row in rows if row.method == default and row.scenario.null]
    median = next(row.median for row in rows if row.method == default and not row.scenario.null)
    return [
        (f"sequential false rollback <= {alpha:.0%} in every A/A scenario", max(false_rates) <= alpha),
        (f"sequential median n to roll back {median:,.0f} <= 1.5 x {needed:,}", median <= 1.5 * needed),
    ]


def slow_requests_study(args: argparse.Namespace, rng: np.random.Generator) -> list[Goal]:
    """The slowRequests guardrail on log-normal latencies in the predictor's buckets, at the old and new default
    tolerance, with its share of alpha when the default guardrails split it."""
    looks = args.budget // args.batch
    defaults = specs.Rollout().guardrails
    tolerance = next(guardrail.tolerance for guardrail in defaults if guardrail.name == "slowRequests")
    alpha = split_alpha(args.alpha, [guardrail.name for guardrail in defaults])["slowRequests"]
    methods = {
        OLD_SLOW_TOLERANCE: f"tolerance {OLD_SLOW_TOLERANCE:g} (old default)",
        tolerance: f"tolerance {tolerance:g} (default)",
    }
    scenarios = [
        LatencyScenario("A/A latency", 1.0, args.batch, args.batch),
        LatencyScenario("A/A latency, 10% canary step", 1.0, 9 * args.batch, args.batch),
        # Where the incumbent's p95 bucket is chosen from the most uncertain data: the p95 on a boundary.
        LatencyScenario("A/A latency, p95 on a bucket boundary", 1.0, args.batch, args.batch, (0.05, 0.05)),
        LatencyScenario("+30% latency", 1.3, args.batch, args.batch),
        LatencyScenario("+30% latency, 10% canary step", 1.3, 9 * args.batch, args.batch),
        LatencyScenario("+50% latency", 1.5, args.batch, args.batch),
    ]
    rows: list[Row] = []
    for scenario in scenarios:
        tick = time.perf_counter()
        fired = slow_alarms(
            scenario, list(methods), streams=args.streams, looks=looks, sigma=args.sigma, alpha=alpha, rng=rng
        )
        rows.extend(latency_row(scenario, method, fired[tolerance]) for tolerance, method in methods.items())
        print(
            f"{scenario.name}: {args.streams:,} streams x {looks} looks, {time.perf_counter() - tick:.1f} s",
            file=sys.stderr,
        )

    low, high = scenarios[0].p95
    buckets = ", ".join(f"{bound:g}" for bound in LATENCY_BUCKETS)
    others = ", ".join(guardrail.name for guardrail in defaults if guardrail.name != "slowRequests")
    print(
        f"\nslowRequests: log-normal latency (sigma {args.sigma:g}), the incumbent's p95 log-uniform in"
        f" {low * 1000:g}-{high * 1000:g} ms unless the scenario places it, the predictor's buckets ({buckets} s,"
        f" +Inf); slow = above the incumbent's p95 bucket in the window; alpha {alpha:g}, its share of"
        f" {args.alpha:g} beside {others}\n"
    )
    print(table(rows, args.budget))

    new = methods[tolerance]
    false_rates = [row.rolled_back for row in rows if row.method == new and row.scenario.null]
    caught = min(row.rolled_back for row in rows if row.method == new and row.scenario.name.startswith("+30%"))
    return [
        (f"slowRequests false rollback <= {alpha:.2%} in every A/A scenario", max(false_rates) <= alpha),
        (f"slowRequests rolls back +30% latency in {caught:.1%} >= 80% of streams", caught >= 0.8),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=10_000, help="synthetic request streams per scenario (10000)")
    parser.add_argument("--batch", type=int, default=50, help="requests per arm between looks (50)")
    parser.add_argument("--budget", type=int, default=10_000, help="requests per arm before giving up (10000)")
    parser.add_argument("--alpha", type=float, default=0.05, help="false-rollback rate allowed (0.05)")
    parser.add_argument("--baseline", type=float, default=0.01, help="incumbent error rate (0.01)")
    parser.add_argument("--worse", type=float, default=0.02, help="error rate of the worse challenger (0.02)")
    parser.add_argument("--sigma", type=float, default=0.5, help="spread of log latency (0.5)")
    parser.add_argument("--seed", type=int, default=20240601, help="random seed")
    args = parser.parse_args()

    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    goals = error_rate_study(args, rng) + slow_requests_study(args, rng)
    print()
    for goal, met in goals:
        print(f"goal: {goal}: {'met' if met else 'MISSED'}")
    print(f"run time {time.perf_counter() - started:.1f} s")
    return 0 if all(met for _, met in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
