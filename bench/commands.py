"""Command-line start-up benchmark: whole-process wall time of the predictor's tools answering `--help` and a bad
flag, side by side with the baseline of loading the modules that do the work (what `--help` cost while the flags
lived beside them). Goal: under 0.5 s each."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
GOAL = 0.5
COMMANDS = [
    ("steward-predict batch --help", [str(BIN / "steward-predict"), "batch", "--help"], "steward_predictor.predicting"),
    ("steward-predict batch (no --output)", [str(BIN / "steward-predict"), "batch", "--input", "x.csv"], None),
    ("steward-bundle --help", [str(BIN / "steward-bundle"), "--help"], "steward_predictor.bundling"),
    ("kubectl-steward --help", [str(BIN / "kubectl-steward"), "--help"], None),
]


def timed(command: list[str], runs: int) -> list[float]:
    """Wall times of `runs` runs of `command`, after one run that warms the page cache."""
    found = []
    for attempt in range(runs + 1):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False, timeout=120)
        if attempt:
            found.append(time.perf_counter() - started)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command (default %(default)s)")
    args = parser.parse_args()
    print(f"command start-up, median of {args.runs} runs (min-max); baseline: importing the module that works")
    missed = []
    for name, command, module in COMMANDS:
        seconds = timed(command, args.runs)
        median = statistics.median(seconds)
        line = f"  {name:<40} {median:6.3f} s ({min(seconds):.3f}-{max(seconds):.3f})"
        if module is not None:
            baseline = statistics.median(timed([sys.executable, "-c", f"import {module}"], args.runs))
            line += f"   baseline {baseline:6.3f} s, ratio {median / baseline:.2f}"
        print(line)
        if median >= GOAL:
            missed.append(name)
    print(f"goal: each under {GOAL} s: {'met' if not missed else 'missed by ' + ', '.join(missed)}")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
