"""Simulation study of the rollback statistics: how often Steward's anytime-valid guardrail rolls back a challenger
that is no worse (A/A), and how many requests it needs to roll back one that is (1% -> 2% errors), side by side
with the threshold check Flagger and Argo Rollouts make, on the very same synthetic request streams.

Every method looks after every batch of requests, as an operator reading Prometheus after every scrape would.
Run: .venv/bin/python bench/sequential.py   (exits non-zero when a goal is missed)

Goals: the sequential guardrail's A/A false-rollback rate is at most alpha, and its median number of requests per
arm to roll back 1% -> 2% is within 1.5x the fixed-horizon sample size (one look, two-sided alpha, power 0.8)."""

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

from steward_operator.sequential import RELEVANT_RATE_INCREASE, ThresholdRule, difference_bounds, first_alarm

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
class Row:
    scenario: Scenario
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=10_000, help="synthetic request streams per scenario (10000)")
    parser.add_argument("--batch", type=int, default=50, help="requests per arm between looks (50)")
    parser.add_argument("--budget", type=int, default=10_000, help="requests per arm before giving up (10000)")
    parser.add_argument("--alpha", type=float, default=0.05, help="false-rollback rate allowed (0.05)")
    parser.add_argument("--baseline", type=float, default=0.01, help="incumbent error rate (0.01)")
    parser.add_argument("--worse", type=float, default=0.02, help="error rate of the worse challenger (0.02)")
    parser.add_argument("--seed", type=int, default=20240601, help="random seed")
    args = parser.parse_args()

    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
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
    print(f"\nlooks after every {args.batch} requests per arm, up to {args.budget:,} per arm; alpha = {alpha}")
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
    goals = [
        (f"sequential false rollback <= {alpha:.0%} in every A/A scenario", max(false_rates) <= alpha),
        (f"sequential median n to roll back {median:,.0f} <= 1.5 x {needed:,}", median <= 1.5 * needed),
    ]
    print()
    for goal, met in goals:
        print(f"goal: {goal}: {'met' if met else 'MISSED'}")
    print(f"run time {time.perf_counter() - started:.1f} s")
    return 0 if all(met for _, met in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
