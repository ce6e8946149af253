"""Command-line start-up benchmark: whole-process wall time of the predictor's tools answering `--help` and a bad
flag, side by side with the baseline of loading the modules that do the work (what `--help` cost while the flags
lived beside them). Goal: under 0.5 s each.

Then how soon a batch job on a small file starts scoring: from starting `steward-predict batch` on 100 rows to its
first scored chunk (its first progress line), side by side with a bare process that unpickles the same pipeline and
predicts the same file. Goal: under 2 s."""

from __future__ import annotations

import argparse
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from tests.support import models  # noqa: E402

BIN = Path(sys.executable).parent
GOAL = 0.5
SCORING_GOAL = 2.0
SMALL_FILE_ROWS = 100
_BARE_SCORER = (
    "import pickle, sys, pandas; pipeline = pickle.load(open(sys.argv[1], 'rb'));"
    " pipeline.predict(pandas.read_csv(sys.argv[2])); print('scored', file=sys.stderr, flush=True)"
)
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


def first_line(command: list[str], runs: int) -> list[float]:
    """Seconds from starting `command` to its first line on stderr, for `runs` runs after one warm-up run."""
    found = []
    for attempt in range(runs + 1):
        started = time.perf_counter()
        with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
            line = process.stderr.readline() if process.stderr else ""
            seen = time.perf_counter() - started
            process.communicate(timeout=120)
        if process.returncode != 0 or not line:
            raise SystemExit(f"{command[0]} failed ({process.returncode}): {line.strip()}")
        if attempt:
            found.append(seen)
    return found


def time_to_first_score(runs: int) -> tuple[list[float], list[float]]:
    """(steward-predict batch, bare scorer) seconds to the first scored rows of a small CSV file."""
    with tempfile.TemporaryDirectory(prefix="steward-bench-") as scratch:
        directory = Path(scratch)
        trained = models.breast_cancer(directory, version="bench")
        source, pickled = directory / "small.csv", directory / "pipeline.pickle"
        trained.x_train.head(SMALL_FILE_ROWS).to_csv(source, index=False)
        pickled.write_bytes(pickle.dumps(trained.pipeline))
        batch = [str(BIN / "steward-predict"), "batch", "--bundle", str(trained.path), "--input", str(source)]
        batch += ["--output", str(directory / "scores.parquet"), "--if-exists", "replace"]
        return first_line(batch, runs), first_line(
            [sys.executable, "-c", _BARE_SCORER, str(pickled), str(source)], runs
        )


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
    batch, bare = time_to_first_score(args.runs)
    median, baseline = statistics.median(batch), statistics.median(bare)
    print(
        f"steward-predict batch on {SMALL_FILE_ROWS} rows, to its first scored chunk: {median:.3f} s"
        f" ({min(batch):.3f}-{max(batch):.3f}); bare pickle-and-predict {baseline:.3f} s, ratio {median / baseline:.2f}"
    )
    scoring_met = median < SCORING_GOAL
    print(f"goal: under {SCORING_GOAL} s: {'met' if scoring_met else 'missed'}")
    return 0 if not missed and scoring_met else 1


if __name__ == "__main__":
    sys.exit(main())
