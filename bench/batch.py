"""Benchmark of batch scoring: peak memory and throughput of `steward-predict batch` on 100k and 1M rows of
CSV and Parquet, against plain in-process runs; a release's shadow run, which scores every chunk with two
bundles and compares them, against the two versions' single runs; and runs reporting every row to a real monitor,
against the same run reporting nothing. Run: .venv/bin/python bench/batch.py

Two baselines, both reading the whole file at once in this process:
- plain: pandas read, pipeline.predict, the predictions written with pandas (the goal: batch >= 0.8x this);
- same work: the same validation, predictions, probabilities and output columns as steward-predict, in one
  chunk, written with Arrow. Its ratio is what streaming in bounded memory costs by itself.
The generated data lives in a temporary directory and is removed at the end (--keep keeps it)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from steward_harness.monitors import Monitor
from steward_predictor.bundles import Bundle
from steward_predictor.chunks import ChunkScorer
from steward_predictor.scoring import Scorer

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from tests.support import models  # noqa: E402

SIZES = (100_000, 1_000_000)
FORMATS = ("csv", "parquet")
# Where the console script lives: beside this interpreter, in the same virtual environment.
STEWARD_PREDICT = Path(sys.executable).with_name("steward-predict")


@dataclass(frozen=True)
class Measurement:
    format: str
    rows: int
    batch_seconds: float
    """The scoring loop as the summary reports it: reading, validating, scoring, writing and publishing."""
    batch_wall_seconds: float
    """The whole process: start-up, imports, bundle loading and the parity check as well."""
    batch_peak_rss: int
    """Bytes."""
    plain_seconds: float
    same_work_seconds: float


def generate(x: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """Rows drawn from the training rows with a little noise, kept inside the training range (so the schema
    counts no out-of-range values); missing values stay where the drawn rows had them."""
    rng = np.random.default_rng(seed)
    drawn = x.iloc[rng.integers(0, len(x), size=rows)].reset_index(drop=True)
    for name in x.columns:
        column = x[name]
        if pd.api.types.is_numeric_dtype(column):
            noise = rng.normal(0.0, 0.02 * float(column.std()), size=rows)
            drawn[name] = (drawn[name] + noise).clip(float(column.min()), float(column.max()))
    return drawn


def write(frame: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if path.suffix == ".csv":
        pa_csv.write_csv(table, path)
    else:
        pq.write_table(table, path)


def run_batch(bundle: Path, source: Path, output: Path, *extra: str) -> tuple[float, float, int]:
    """(scoring seconds from the summary, wall seconds, peak RSS in bytes) of one steward-predict run."""
    output.unlink(missing_ok=True)
    started = time.monotonic()
    command = [str(STEWARD_PREDICT), "batch", "--bundle", str(bundle), "--input", str(source), "--output", str(output)]
    with subprocess.Popen(
        [*command, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as process:
        peak = _peak_rss(process.pid)
        stdout, _ = process.communicate()
    wall = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"steward-predict exited with {process.returncode} on {source}")
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    return float(summary["seconds"]), wall, peak


def _peak_rss(pid: int) -> int:
    """The child's peak resident set, from /proc polling until it exits. Its rusage would not do: Linux carries
    the parent's peak across fork and exec into the child's ru_maxrss, and this process holds the data."""
    status = Path(f"/proc/{pid}/status")
    peak = 0
    while True:
        try:
            text = status.read_text()
        except OSError:
            return peak
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if "VmHWM" not in fields:
            # A zombie: it has exited and its memory is gone; the last reading stands.
            return peak
        peak = max(peak, int(fields["VmHWM"].split()[0]) * 1024)
        time.sleep(0.01)


def _read_whole(source: Path) -> pd.DataFrame:
    return pd.read_csv(source) if source.suffix == ".csv" else pd.read_parquet(source)


def run_plain(pipeline: Any, source: Path, output: Path) -> float:
    """Seconds to read the whole file, predict and write the predictions with pandas."""
    started = time.monotonic()
    predictions = pd.DataFrame({"prediction": pipeline.predict(_read_whole(source))})
    if output.suffix == ".csv":
        predictions.to_csv(output, index=False)
    else:
        predictions.to_parquet(output, index=False)
    return time.monotonic() - started


def run_same_work(bundle: Bundle, source: Path, output: Path) -> float:
    """Seconds to read the whole file and validate, score and write it as steward-predict does, in one chunk."""
    started = time.monotonic()
    scores = ChunkScorer(Scorer(bundle), run_id="same-work").score(_read_whole(source)).scores
    if output.suffix == ".csv":
        # The one timestamp formatted once, as steward-predict does: Arrow's CSV writer is slow at timestamps.
        moment = scores.column("scored_at").unique().cast(pa.string())
        text = pa.DictionaryArray.from_arrays(pa.array(np.zeros(scores.num_rows, dtype=np.int32)), moment)
        scores = scores.set_column(scores.schema.get_field_index("scored_at"), "scored_at", text.dictionary_decode())
        pa_csv.write_csv(scores, output)
    else:
        pq.write_table(scores, output)
    return time.monotonic() - started


def _best(runs: int, measure: Callable[[], float]) -> float:
    # The best of a few runs: the one least disturbed by whatever else the machine is doing.
    return min(measure() for _ in range(runs))


def report(measurements: list[Measurement]) -> str:
    lines = [
        "| format | rows | batch rows/s | plain rows/s | batch ÷ plain | same-work rows/s | batch ÷ same-work "
        "| batch wall rows/s | batch peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measurements:
        lines.append(
            f"| {m.format} | {m.rows:,} | {m.rows / m.batch_seconds:,.0f} | {m.rows / m.plain_seconds:,.0f} "
            f"| {m.plain_seconds / m.batch_seconds:.2f} | {m.rows / m.same_work_seconds:,.0f} "
            f"| {m.same_work_seconds / m.batch_seconds:.2f} | {m.rows / m.batch_wall_seconds:,.0f} "
            f"| {m.batch_peak_rss / 2**20:,.0f} MiB |"
        )
    lines.append("")
    for name in FORMATS:
        runs = {m.rows: m for m in measurements if m.format == name}
        small, large = runs[min(runs)], runs[max(runs)]
        lines.append(
            f"{name}: peak RSS {large.rows:,} ÷ {small.rows:,} rows = {large.batch_peak_rss / small.batch_peak_rss:.2f}"
        )
    return "\n".join(lines)


def _shadow_run(args: argparse.Namespace, scratch: Path, x: pd.DataFrame, incumbent: Path) -> str:
    """A release's shadow run (the challenger's bundle, each chunk scored with the incumbent's too and compared)
    against the two versions' single runs one after the other, on the largest Parquet input: the goal is no
    slower than those two runs (ratio >= 1.0)."""
    rows = max(args.sizes)
    challenger = models.breast_cancer(scratch, version="bench-challenger", c=0.5).path
    source = scratch / f"in-{rows}.parquet"
    write(generate(x, rows, seed=rows), source)
    output = scratch / "shadow.parquet"
    shadows = [run_batch(challenger, source, output, "--compare-with", str(incumbent)) for _ in range(args.repeat)]
    singles = [
        run_batch(incumbent, source, output)[1] + run_batch(challenger, source, output)[1] for _ in range(args.repeat)
    ]
    shadow, two = min(run[1] for run in shadows), min(singles)
    return (
        f"\nparquet {rows:,} rows, whole processes: a shadow run comparing two bundles {shadow:.2f} s "
        f"({max(run[2] for run in shadows) / 2**20:,.0f} MiB peak) against both versions' single runs one after the "
        f"other {two:.2f} s: {two / shadow:.2f}x (goal >= 1.0)"
    )


def _reported_runs(scratch: Path, rows: int, incumbent: Path) -> str:
    """A run that reports every row to a real monitor (SQLite), and one that also reports a shadow's answers to the
    same rows, against the same run reporting nothing, on a Parquet input: whole processes, one run each (the
    monitor's store grows with every run). Reporting costs what the monitor takes to store the rows."""
    challenger = models.breast_cancer(scratch, version="bench-shadow", c=0.5).path
    source, output = scratch / f"in-{rows}.parquet", scratch / "reported.parquet"
    with Monitor(f"sqlite:///{scratch / 'monitor.db'}") as monitor:
        token = monitor.predictor_token("bench", "bench")
        flags = ("--monitor-url", monitor.url, "--monitor-token", token, "--model", "bench", "--namespace", "bench")
        alone = run_batch(incumbent, source, output)[1]
        reported = run_batch(incumbent, source, output, *flags)[1]
        shadowed = run_batch(incumbent, source, output, *flags, "--shadow", str(challenger))[1]
    return (
        f"\nparquet {rows:,} rows, whole processes: {alone:.2f} s reporting nothing; {reported:.2f} s reporting every "
        f"row to a monitor on SQLite ({rows / reported:,.0f} rows/s, {alone / reported:.2f}x); {shadowed:.2f} s with "
        f"a shadow's answers too ({2 * rows / shadowed:,.0f} events/s, {alone / shadowed:.2f}x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="row counts (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, the best kept (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and outputs")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="steward-bench-"))
    try:
        trained = models.breast_cancer(scratch, version="bench")
        pipeline, x, bundle, bundle_path = trained.pipeline, trained.x_train, trained.bundle, trained.path
        measurements = []
        for rows in args.sizes:
            frame = generate(x, rows, seed=rows)
            for name in FORMATS:
                source = scratch / f"in-{rows}.{name}"
                write(frame, source)
                scores, plain_scores, same_scores = (
                    scratch / f"{kind}-{rows}.{name}" for kind in ("scores", "plain", "same")
                )
                batches = [run_batch(bundle_path, source, scores) for _ in range(args.repeat)]
                plain = _best(args.repeat, partial(run_plain, pipeline, source, plain_scores))
                same = _best(args.repeat, partial(run_same_work, bundle, source, same_scores))
                measurement = Measurement(
                    format=name,
                    rows=rows,
                    batch_seconds=min(run[0] for run in batches),
                    batch_wall_seconds=min(run[1] for run in batches),
                    batch_peak_rss=max(run[2] for run in batches),
                    plain_seconds=plain,
                    same_work_seconds=same,
                )
                measurements.append(measurement)
                print(
                    f"{name} {rows:,} rows: batch {measurement.batch_seconds:.2f} s "
                    f"({measurement.batch_wall_seconds:.2f} s wall, {measurement.batch_peak_rss / 2**20:.0f} MiB), "
                    f"plain {plain:.2f} s, same work {same:.2f} s",
                    file=sys.stderr,
                )
        print(report(measurements))
        print(_shadow_run(args, scratch, x, bundle_path))
        print(_reported_runs(scratch, min(args.sizes), bundle_path))
    finally:
        if args.keep:
            print(f"data kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
