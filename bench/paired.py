"""Paired against unpaired: how many requests each needs to roll back a challenger 2 percentage points less accurate
(incumbent 90 %, challenger 88 %, the two agreeing on 96 % of requests, as two versions of one model do), when both
answer the same requests in shadow and outcomes arrive for every one. The unpaired test is the one releases used
before pairs: the anytime-valid comparison of two independent error rates (`sequential.difference_bounds`). The
paired one is the pairedAccuracy guardrail (`paired.accuracy_drop`), which only the discordant requests move. Then
the disagreement guardrail: A/A at its tolerance, and a challenger answering differently twice as often.

Every test looks after every batch of requests, as the operator does after every scrape.
Run: .venv/bin/python bench/paired.py   (exits non-zero when a goal is missed)

Goals: each paired test's A/A false-rollback rate is at most alpha; the paired test needs at most half the
requests of the unpaired one for the same drop; each paired test's median within 1.5x the best single-look test
for the same effect (McNemar's, and the one-sided binomial)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from steward_operator import paired
from steward_operator.sequential import Floats, difference_bounds

ALPHA = 0.05
Z = NormalDist().inv_cdf
Counts = dict[float, int]


def first(counts: Callable[[int, int], Counts], streams: int, looks: int, null: float, *, above: bool) -> Floats:
    """Requests until each stream's test rejected `null` (inf where it never did), looking after every look."""
    found = np.full(streams, np.inf)
    for stream in range(streams):
        for look in range(looks):
            seen = counts(stream, look)
            if paired.rejects(seen, null, ALPHA, above=above):
                found[stream] = sum(seen.values())
                break
    return found


def median(needed: Floats) -> float:
    """The median requests to roll back; inf when fewer than half the streams rolled back."""
    return float(np.median(needed))


def accuracy_study(args: argparse.Namespace, rng: np.random.Generator) -> list[tuple[str, bool]]:
    every, looks = args.every, args.budget // args.every
    labelled = every * np.arange(1, looks + 1)
    rows: dict[str, tuple[Floats, Floats]] = {}
    for name, only_i, only_c in (("A/A, 2 % vs 2 % discordant", 0.02, 0.02), ("2-point drop, 3 % vs 1 %", 0.03, 0.01)):
        shares = [only_i, only_c, 1 - only_i - only_c]
        draws = rng.multinomial(every, shares, (args.streams, looks))
        b, c = draws[:, :, 0].cumsum(axis=1), draws[:, :, 1].cumsum(axis=1)

        def scores(stream: int, look: int, b: NDArray[np.int64] = b, c: NDArray[np.int64] = c) -> Counts:
            # Each labelled pair: (1 + challenger right - incumbent right) / 2; pairedAccuracy at tolerance 0
            # rolls back once their mean is credibly below 1/2.
            wrong, right = int(b[stream, look]), int(c[stream, look])
            return {0.0: wrong, 0.5: int(labelled[look]) - wrong - right, 1.0: right}

        paired_needed = first(scores, args.streams, looks, 0.5, above=False)
        # Unpaired: each version's misclassifications as an independent sample, as the error-rate comparison reads
        # two versions (the incumbent wrong on 10 %, the challenger on 10 % + the drop).
        shared = rng.binomial(every, 0.10 - only_i, (args.streams, looks)).cumsum(axis=1)
        lower, _ = difference_bounds(shared + c, labelled, shared + b, labelled, alpha=ALPHA)
        fired = (lower > 0).any(axis=1)
        unpaired_needed = np.where(fired, labelled[(lower > 0).argmax(axis=1)], np.inf)
        rows[name] = (paired_needed, unpaired_needed)
    print(
        f"\n## pairedAccuracy against two independent error rates ({args.streams} streams each, a look every"
        f" {every} labelled requests, at most {args.budget:,}, alpha {ALPHA})\n"
    )
    print("| scenario | test | rolled back | median requests to roll back |")
    print("|---|---|---:|---:|")
    for name, (paired_needed, unpaired_needed) in rows.items():
        for test, needed in (("paired", paired_needed), ("unpaired", unpaired_needed)):
            shown = "-" if name.startswith("A/A") else f"{median(needed):,.0f}"
            print(f"| {name} | {test} | {np.isfinite(needed).mean():.1%} | {shown} |")
    aa = float(np.isfinite(rows["A/A, 2 % vs 2 % discordant"][0]).mean())
    drop_paired, drop_unpaired = (median(needed) for needed in rows["2-point drop, 3 % vs 1 %"])
    # McNemar's single-look sample size for 4 % discordant pairs and a 2-point difference (Connor 1987).
    discordant, drop = 0.04, 0.02
    mcnemar = (Z(1 - ALPHA) * math.sqrt(discordant) + Z(0.8) * math.sqrt(discordant - drop**2)) ** 2 / drop**2
    print(f"\nbest single-look paired test (McNemar's, power 0.8): {mcnemar:,.0f} labelled requests")
    print(f"paired / unpaired median: {drop_paired / drop_unpaired:.2f}")
    return [
        (f"pairedAccuracy A/A false rollbacks {aa:.1%} <= {ALPHA:.0%}", aa <= ALPHA),
        (
            f"paired needs at most half the unpaired requests ({drop_paired:,.0f} against {drop_unpaired:,.0f})",
            drop_paired <= drop_unpaired / 2,
        ),
        (
            f"pairedAccuracy median {drop_paired:,.0f} within 1.5x McNemar's {mcnemar:,.0f}",
            drop_paired <= 1.5 * mcnemar,
        ),
    ]


def disagreement_study(args: argparse.Namespace, rng: np.random.Generator) -> list[tuple[str, bool]]:
    every, looks, tolerance = args.every, args.budget // args.every, 0.02
    seen = every * np.arange(1, looks + 1)
    rows = {}
    for name, rate in (("A/A, 2 % at tolerance 2 %", tolerance), ("twice the tolerance, 4 %", 2 * tolerance)):
        differ = rng.binomial(every, rate, (args.streams, looks)).cumsum(axis=1)

        def answers(stream: int, look: int, differ: NDArray[np.int64] = differ) -> Counts:
            different = int(differ[stream, look])
            return {1.0: different, 0.0: int(seen[look]) - different}

        rows[name] = first(answers, args.streams, looks, tolerance, above=True)
    spread = math.sqrt(tolerance * (1 - tolerance)), math.sqrt(2 * tolerance * (1 - 2 * tolerance))
    best = (Z(1 - ALPHA) * spread[0] + Z(0.8) * spread[1]) ** 2 / tolerance**2
    print(f"\n## disagreement at tolerance {tolerance:.0%}\n")
    print("| scenario | rolled back | median requests to roll back |")
    print("|---|---:|---:|")
    for name, needed in rows.items():
        shown = "-" if name.startswith("A/A") else f"{median(needed):,.0f}"
        print(f"| {name} | {np.isfinite(needed).mean():.1%} | {shown} |")
    print(f"\nbest single-look test (one-sided binomial, power 0.8): {best:,.0f} requests")
    aa, found = (rows[name] for name in rows)
    false = float(np.isfinite(aa).mean())
    return [
        (f"disagreement A/A false rollbacks {false:.1%} <= {ALPHA:.0%}", false <= ALPHA),
        (
            f"disagreement median {median(found):,.0f} within 1.5x the binomial test's {best:,.0f}",
            median(found) <= 1.5 * best,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=400, help="simulated releases per scenario (%(default)s)")
    parser.add_argument("--every", type=int, default=25, help="requests between looks (%(default)s)")
    parser.add_argument("--budget", type=int, default=10_000, help="requests per stream at most (%(default)s)")
    args = parser.parse_args()
    started = time.perf_counter()
    rng = np.random.default_rng(20261204)
    goals = accuracy_study(args, rng) + disagreement_study(args, rng)
    print()
    for goal, met in goals:
        print(f"goal: {goal}: {'met' if met else 'MISSED'}")
    print(f"run time {time.perf_counter() - started:.1f} s")
    return 0 if all(met for _, met in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
