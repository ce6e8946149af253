"""The guardrails against the best single look: how many requests per version errorRate, predictionShift (one
confidence ellipsoid over every bin) and latency (the whole histogram) need to roll back a worse challenger, beside
the per-bin union bound and the one-bucket slowRequests they improve on, and how often each rolls back a challenger
that is no different (A/A), looking after every batch of requests.

The best single look: a two-proportion z-test for errors, Pearson's chi-square test for the predictions (its power
from the noncentral chi-square), and for latency a t-test on the log of every request's exact latency, which a
histogram does not keep (so no guardrail can match it), and the same on the bucket each request fell in (what the
histogram keeps).
Run: .venv/bin/python bench/distributions.py   (exits non-zero when a goal is missed)

Goals: every A/A false-rollback rate at most alpha; each guardrail's median within 1.5x its best single look
(for latency, the single look on what the histogram keeps)."""

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

from steward_operator.distributions import compare_distributions, compare_latencies
from steward_operator.sequential import difference_bounds, first_alarm
from steward_predictor.metrics import LATENCY_BUCKETS

Z = NormalDist().inv_cdf
Judge = Callable[[NDArray[np.int64], NDArray[np.int64]], bool]
"""Whether a guardrail rolls back, given both versions' counts so far (per bin, or cumulative per bucket)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    incumbent: NDArray[np.float64]
    """Shares per bin (predictions) or per latency bucket."""
    challenger: NDArray[np.float64]
    incumbent_batch: int
    challenger_batch: int

    @property
    def null(self) -> bool:
        return bool(np.allclose(self.incumbent, self.challenger))


def requests_to_rollback(
    scenario: Scenario, judge: Judge, args: argparse.Namespace, rng: np.random.Generator
) -> NDArray[np.float64]:
    """The challenger's requests when each stream first rolled back (inf: never within the budget)."""
    looks = args.budget // args.every
    found = np.full(args.streams, np.inf)
    for stream in range(args.streams):
        counts_i = np.cumsum(rng.multinomial(scenario.incumbent_batch, scenario.incumbent, looks), axis=0)
        counts_c = np.cumsum(rng.multinomial(scenario.challenger_batch, scenario.challenger, looks), axis=0)
        for look in range(looks):
            if judge(counts_i[look], counts_c[look]):
                found[stream] = (look + 1) * scenario.challenger_batch
                break
    return found


def median(found: NDArray[np.float64]) -> float:
    return float(np.sort(found)[math.ceil(0.5 * found.size) - 1])


# --- errorRate -----------------------------------------------------------------------------------------------------


def error_rate_study(args: argparse.Namespace, rng: np.random.Generator) -> list[tuple[str, bool]]:
    """errorRate's confidence sequence (compare_rates' bounds, on every stream at once) at every look."""
    budget = 30_000
    looks = budget // args.every
    every = f"a look every {args.every} requests per version, up to {budget:,}"
    print(f"\nerrorRate, tolerance 0: {every}; alpha {args.alpha}")
    print(f"{'scenario':52} {'false rollback %':>16} {'median n':>9} {'single look':>24}")
    goals = []
    for base, worse in ((0.01, 0.01), (0.001, 0.001), (0.01, 0.015), (0.001, 0.005)):
        shape = (args.streams, looks)
        errors_i = np.cumsum(rng.binomial(args.every, base, shape), axis=1)
        errors_c = np.cumsum(rng.binomial(args.every, worse, shape), axis=1)
        requests = np.broadcast_to(args.every * np.arange(1, looks + 1), shape)
        lower, _ = difference_bounds(errors_i, requests, errors_c, requests, alpha=args.alpha)
        fired = first_alarm(lower > 0)
        found = np.where(fired >= 0, (fired + 1.0) * args.every, np.inf)
        rolled = float(np.mean(fired >= 0))
        if worse == base:
            name = f"A/A errors {base:.1%}"
            print(f"{name:52} {100 * rolled:>16.1f} {'-':>9} {'':>24}")
            goals.append((f"errorRate, {name}: false rollbacks {rolled:.1%} <= {args.alpha:.0%}", rolled <= args.alpha))
            continue
        name, bound = f"errors {base:.1%} -> {worse:.1%}", two_proportions_single_look(base, worse, args.alpha, 0.8)
        print(f"{name:52} {'-':>16} {median(found):>9,.0f} {f'z-test: {bound:,}':>24}")
        goals.append(
            (f"errorRate, {name}: median {median(found):,.0f} <= 1.5 x {bound:,}", median(found) <= 1.5 * bound)
        )
    return goals


def two_proportions_single_look(base: float, worse: float, alpha: float, power: float) -> int:
    """Requests per version for one two-sided look at two error rates (pooled variance under the null)."""
    pooled = (base + worse) / 2
    null = Z(1 - alpha / 2) * math.sqrt(2 * pooled * (1 - pooled))
    alternative = Z(power) * math.sqrt(base * (1 - base) + worse * (1 - worse))
    return math.ceil(((null + alternative) / (worse - base)) ** 2)


# --- predictionShift ---------------------------------------------------------------------------------------------


def whole(alpha: float) -> Judge:
    return lambda i, c: compare_distributions("p", list(i), list(c), tolerance=0.0, alpha=alpha).verdict == "fail"


def per_bin(alpha: float) -> Judge:
    """Today's test: each bin's share difference in its own confidence sequence at alpha / (2 bins), the distance's
    lower bound half the sum of the smallest differences they allow."""

    def judge(i: NDArray[np.int64], c: NDArray[np.int64]) -> bool:
        low, high = difference_bounds(i, i.sum(), c, c.sum(), alpha=alpha / (2 * i.size), effect=0.02)
        return bool(0.5 * np.maximum(np.maximum(low, -high), 0.0).sum() > 0)

    return judge


def chi_square_single_look(scenario: Scenario, alpha: float, power: float, rng: np.random.Generator) -> int:
    """Requests per version for Pearson's two-sample chi-square test, one look, to reach `power`: the least n whose
    noncentral chi-square (noncentrality n/2 sum of squared differences over the pooled shares) exceeds the null's
    1 - alpha quantile that often (both quantiles by a million draws)."""
    dimensions = scenario.incumbent.size - 1
    critical = float(np.quantile(rng.chisquare(dimensions, 1_000_000), 1 - alpha))
    pooled = (scenario.incumbent + scenario.challenger) / 2
    per_request = float(np.sum((scenario.challenger - scenario.incumbent) ** 2 / pooled)) / 2
    draws = rng.standard_normal((200_000, dimensions))
    low, high = 1, 100_000
    while low < high:
        n = (low + high) // 2
        shifted = draws.copy()
        shifted[:, 0] += math.sqrt(n * per_request)
        if np.mean(np.sum(shifted**2, axis=1) > critical) >= power:
            high = n
        else:
            low = n + 1
    return low


def prediction_scenarios(every: int) -> list[Scenario]:
    even = np.full(10, 0.1)
    skewed = np.asarray([0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05, 0.03, 0.02, 0.01])
    spread = even + np.tile([0.02, -0.02], 5)
    moved = even.copy()
    moved[0], moved[1] = 0.2, 0.0
    return [
        Scenario("A/A, 10 even classes", even, even, every, every),
        Scenario("A/A, 10 skewed classes (1 %-30 %)", skewed, skewed, every, every),
        Scenario("A/A, 10 even classes, 10 % canary step", even, even, 9 * every, every),
        Scenario("total variation 0.1 over 10 classes (+-2 pp each)", even, spread, every, every),
        Scenario("10 pp moved between two of 10 classes", even, moved, every, every),
    ]


# --- latency -------------------------------------------------------------------------------------------------------

_normal_cdf = np.vectorize(NormalDist().cdf, otypes=[np.float64])
_Z95 = NormalDist().inv_cdf(0.95)


def bucket_shares(p95: float, slower: float, sigma: float) -> NDArray[np.float64]:
    """Shares per predictor latency bucket (then +Inf) of a log-normal latency with spread `sigma` and p95 `p95`
    times `slower`."""
    bounds = np.asarray(LATENCY_BUCKETS, dtype=np.float64)
    median_latency = p95 * slower / math.exp(_Z95 * sigma)
    below = np.append(_normal_cdf(np.log(bounds / median_latency) / sigma), 1.0)
    shares: NDArray[np.float64] = np.clip(np.diff(below, prepend=0.0), 0.0, 1.0)
    shares /= shares.sum()
    return shares


def histograms(judge: Callable[[dict[float, float], dict[float, float]], bool]) -> Judge:
    bounds = [*LATENCY_BUCKETS, math.inf]

    def on_buckets(i: NDArray[np.int64], c: NDArray[np.int64]) -> bool:
        cumulative_i, cumulative_c = np.cumsum(i), np.cumsum(c)
        return judge(
            dict(zip(bounds, cumulative_i.tolist(), strict=True)), dict(zip(bounds, cumulative_c.tolist(), strict=True))
        )

    return on_buckets


def latency_guardrail(alpha: float) -> Judge:
    return histograms(lambda i, c: compare_latencies("l", i, c, tolerance=0.0, alpha=alpha).verdict == "fail")


def slow_requests(alpha: float) -> Judge:
    """Today's slowRequests at tolerance 0: the share above the incumbent's p95 bucket, as two rates."""

    def judge(i: dict[float, float], c: dict[float, float]) -> bool:
        bounds = sorted(i)
        timed_i, timed_c = i[math.inf], c[math.inf]
        threshold = next(bound for bound in bounds if i[bound] >= 0.95 * timed_i)
        if math.isinf(threshold):
            return False
        low, _ = difference_bounds(timed_i - i[threshold], timed_i, timed_c - c[threshold], timed_c, alpha=alpha)
        return bool(low > 0)

    return histograms(judge)


def t_test_single_look(slower: float, sigma: float, alpha: float, power: float) -> int:
    """Requests per version for a two-sided t-test on log latency (normal approximation), one look."""
    return math.ceil(2 * ((Z(1 - alpha / 2) + Z(power)) * sigma / math.log(slower)) ** 2)


def bucketed_single_look(
    incumbent: NDArray[np.float64], challenger: NDArray[np.float64], alpha: float, power: float
) -> int:
    """The same test on the index of the bucket each request fell in (all a histogram keeps)."""
    positions = np.arange(incumbent.size, dtype=np.float64)
    means = [float(shares @ positions) for shares in (incumbent, challenger)]
    variances = [
        float(shares @ positions**2) - mean**2 for shares, mean in zip((incumbent, challenger), means, strict=True)
    ]
    return math.ceil((Z(1 - alpha / 2) + Z(power)) ** 2 * sum(variances) / (means[1] - means[0]) ** 2)


def latency_scenarios(every: int, p95: float, sigma: float) -> list[Scenario]:
    same, slower = bucket_shares(p95, 1.0, sigma), bucket_shares(p95, 1.3, sigma)
    on_boundary = bucket_shares(0.05, 1.0, sigma)
    return [
        Scenario("A/A latency", same, same, every, every),
        Scenario("A/A latency, 10 % canary step", same, same, 9 * every, every),
        Scenario("A/A latency, p95 on a bucket boundary", on_boundary, on_boundary, every, every),
        Scenario("latency +30 %", same, slower, every, every),
    ]


def study(
    title: str,
    *,
    scenarios: list[Scenario],
    methods: dict[str, Judge],
    single_look: Callable[[Scenario], tuple[str, int]],
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> list[tuple[str, bool]]:
    print(f"\n{title}: a look every {args.every} requests per version, up to {args.budget:,}; alpha {args.alpha}")
    print(f"{'scenario':52} {'method':12} {'false rollback %':>16} {'median n':>9} {'single look':>24}")
    goals = []
    new = next(iter(methods))
    for scenario in scenarios:
        best = "" if scenario.null else "{}: {:,}".format(*single_look(scenario))
        for method, judge in methods.items():
            tick = time.perf_counter()
            found = requests_to_rollback(scenario, judge, args, rng)
            rolled = float(np.mean(np.isfinite(found)))
            shown = f">{args.budget:,}" if math.isinf(median(found)) else f"{median(found):,.0f}"
            print(
                f"{scenario.name:52} {method:12} {f'{100 * rolled:.1f}' if scenario.null else '-':>16}"
                f" {'-' if scenario.null else shown:>9} {best:>24}",
            )
            print(f"  ({time.perf_counter() - tick:.1f} s)", file=sys.stderr)
            if scenario.null:
                goals.append(
                    (
                        f"{method}, {scenario.name}: false rollbacks {rolled:.1%} <= {args.alpha:.0%}",
                        rolled <= args.alpha,
                    )
                )
            elif method == new:
                bound = single_look(scenario)[1]
                goals.append(
                    (
                        f"{method}, {scenario.name}: median {median(found):,.0f} <= 1.5 x {bound:,}",
                        median(found) <= 1.5 * bound,
                    )
                )
    return goals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1_000, help="synthetic request streams per scenario (1000)")
    parser.add_argument("--every", type=int, default=10, help="requests per version between looks (10)")
    parser.add_argument("--budget", type=int, default=3_000, help="requests per version before giving up (3000)")
    parser.add_argument("--alpha", type=float, default=0.05, help="false-rollback rate allowed (0.05)")
    parser.add_argument("--sigma", type=float, default=0.5, help="spread of log latency (0.5)")
    parser.add_argument("--p95", type=float, default=0.03, help="the incumbent's p95 latency in seconds (0.03)")
    parser.add_argument("--seed", type=int, default=20261204, help="random seed")
    args = parser.parse_args()
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    alpha = args.alpha

    goals = error_rate_study(args, rng)
    goals += study(
        "predictionShift, tolerance 0",
        scenarios=prediction_scenarios(args.every),
        methods={"whole": whole(alpha), "per bin": per_bin(alpha)},
        single_look=lambda scenario: ("chi-square", chi_square_single_look(scenario, alpha, 0.8, rng)),
        args=args,
        rng=rng,
    )

    exact = t_test_single_look(1.3, args.sigma, alpha, 0.8)
    goals += study(
        f"latency, log-normal (sigma {args.sigma:g}, incumbent p95 {args.p95 * 1000:g} ms), the predictor's buckets",
        scenarios=latency_scenarios(args.every, args.p95, args.sigma),
        methods={"latency": latency_guardrail(alpha), "slowRequests": slow_requests(alpha)},
        single_look=lambda scenario: (
            "t-test on buckets",
            bucketed_single_look(scenario.incumbent, scenario.challenger, alpha, 0.8),
        ),
        args=args,
        rng=rng,
    )
    print(f"\nlatency +30 %: a t-test on every request's exact log latency, one look: {exact:,} per version")
    print()
    for goal, met in goals:
        print(f"goal: {goal}: {'met' if met else 'MISSED'}")
    print(f"run time {time.perf_counter() - started:.1f} s")
    return 0 if all(met for _, met in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
