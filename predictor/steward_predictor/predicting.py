"""steward-predict: runs the command cli.py parsed, and says how it went: progress and messages on stderr, the
summary on stdout, and an exit code for each way a run can end."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry
from threadpoolctl import threadpool_limits

from steward_predictor import allocators, batch, comparing, datasets, locations, scoring
from steward_predictor.batch_log import BatchLog
from steward_predictor.bundles import BundleError
from steward_predictor.defaults import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_REJECTED, EXIT_USAGE, UsageError
from steward_predictor.prediction_log import Reporter

MAX_MONITOR_WAIT = 86_400
"""The longest --monitor-wait: a day."""
_ERROR_CHARACTERS = 600
"""The most of an error's words a summary file carries: the termination message has room for little more."""


def run(args: argparse.Namespace) -> int:
    """`steward-predict batch`, on the arguments cli.predict_parser() parsed."""
    allocators.prefer_jemalloc()
    allocators.keep_freed_memory()
    # Chunks are read and written on other threads while the main one scores: a BLAS thread pool would only spin
    # on their cores between one chunk's small matrix products and the next. The golden examples are replayed
    # with the same single thread as the rows are scored.
    with threadpool_limits(limits=1, user_api="blas"):
        return _batch(args)


def _batch(args: argparse.Namespace) -> int:
    refused = "challenger" if args.compare_with else "model"
    log, shadow_refused, interrupted = None, None, False
    try:
        settings = _settings(args)
        with _stopped_by_signals() as stopping, datasets.Transaction(settings.run_id) as transaction:
            columns = batch.prepare(transaction, settings)
            scorer = _load(args, args.bundle, args.digest)
            incumbent = shadow = None
            if args.compare_with:
                refused = "incumbent"
                incumbent = _load(args, args.compare_with, args.compare_digest)
                refused = "challenger"
            if args.shadow:
                shadow, shadow_refused = _shadow(args)
            bundle = scorer.bundle
            compared = f", compared with {incumbent.bundle.metadata.model_version}" if incumbent else ""
            shadowed = f", shadowed by {shadow.bundle.metadata.model_version}" if shadow else ""
            _say(
                f"scoring {settings.input.display} with model {bundle.metadata.model_version} ({bundle.digest}) "
                f"into {settings.output.display}{compared}{shadowed}, run {settings.run_id}"
            )
            log = _log(args)
            summary = batch.score_batch(
                transaction, settings, scorer, columns, stopping=stopping, incumbent=incumbent, shadow=shadow, log=log
            )
    except (UsageError, locations.LocationError) as error:
        return _failed(args, EXIT_USAGE, "usage", f"error: {error}")
    except BundleError as error:
        return _failed(args, EXIT_REFUSED, f"{refused} bundle refused", f"bundle refused: {error}")
    except batch.RejectedError as error:
        if error.summary is not None:
            print(error.summary.as_json(), flush=True)
        return _failed(args, EXIT_REJECTED, "rejected", f"rejected: {error}", error.summary)
    except locations.DatasetError as error:
        # Publishing that failed past undoing says itself what the output holds.
        unpublished = "" if isinstance(error, locations.PublishingError) else "; nothing was published"
        return _failed(args, EXIT_FAILED, "runtime", f"failed: {error}{unpublished}")
    except KeyboardInterrupt:
        interrupted = True
        return _failed(args, EXIT_FAILED, "interrupted", "interrupted; nothing was published")
    finally:
        reported = _closed(log, interrupted)
    summary.reported = reported
    if shadow_refused is not None:
        summary.shadow = {"refused": shadow_refused}
    print(summary.as_json(), flush=True)
    _write_summary(args, summary.as_dict())
    return EXIT_OK


def _shadow(args: argparse.Namespace) -> tuple[scoring.Scorer | None, str | None]:
    """The --shadow bundle, or why it is left out: a challenger's bundle that cannot be loaded is the challenger's
    failing, and the run goes on without it."""
    try:
        return _load(args, args.shadow, args.shadow_digest), None
    except BundleError as error:
        words = " ".join(str(error).split())[:_ERROR_CHARACTERS]
        _say(f"the shadow bundle is left out: {words}")
        return None, words


def _log(args: argparse.Namespace) -> BatchLog | None:
    """Where the run's rows are reported: the monitor, when one is named, unless this is a comparison run."""
    if not args.monitor_url:
        return None
    if args.compare_with:
        _say("a --compare-with run serves no one: its rows are not reported to the monitor")
        return None
    reporter = Reporter(
        args.monitor_url,
        model=args.model,
        namespace=args.namespace,
        token=args.monitor_token,
        patience=args.monitor_wait,
        registry=CollectorRegistry(),  # nothing scrapes a run: its summary says what became of its rows
    )
    return BatchLog(reporter, args.monitor_wait)


def _closed(log: BatchLog | None, interrupted: bool) -> dict[str, int] | None:
    """What became of the rows reported, once the last are sent (briefly, for a run told to stop), said when any
    did not reach the monitor."""
    if log is None:
        return None
    reported = log.close(hurried=interrupted)
    lost = reported["refused"] + reported["dropped"] + reported["unsent"]
    if lost:
        _say(f"{lost:,} of the rows reported did not reach the monitor: {reported}")
    return reported


def _load(args: argparse.Namespace, uri: str, digest: str | None) -> scoring.Scorer:
    return scoring.load(uri, digest=digest, allow_pickle=args.allow_pickle, trusted_types=args.trust_type)


def _failed(
    args: argparse.Namespace, code: int, failure: str, message: str, summary: batch.Summary | None = None
) -> int:
    """Say what failed, on stderr and in the summary file, and return the exit code."""
    _say(message)
    found = summary.as_dict() if summary is not None else {}
    _write_summary(args, {**found, "failed": failure, "exitCode": code, "error": message[:_ERROR_CHARACTERS]})
    return code


def _write_summary(args: argparse.Namespace, summary: dict[str, object]) -> None:
    if not args.summary_file:
        return
    try:
        Path(args.summary_file).write_text(comparing.message(summary), encoding="utf-8")
    except OSError as error:
        _say(f"could not write the summary to {args.summary_file}: {error}")


def _settings(args: argparse.Namespace) -> batch.Run:
    if args.shadow and args.compare_with:
        raise UsageError(
            "--shadow and --compare-with: a run either shadows a challenger (the incumbent's run) or compares with "
            "an incumbent (a challenger's run), not both"
        )
    if not 0 <= args.monitor_wait <= MAX_MONITOR_WAIT:
        raise UsageError(f"--monitor-wait must be 0 to {MAX_MONITOR_WAIT:,} seconds, not {args.monitor_wait:g}")
    if args.shadow and not args.monitor_url:
        raise UsageError("--shadow needs --monitor-url (STEWARD_MONITOR_URL): the shadow's answers go nowhere else")
    if args.monitor_url and not args.compare_with and not args.model:
        raise UsageError("--monitor-url needs --model (STEWARD_MODEL): the ModelDeployment the rows are filed under")
    source = locations.locate(args.input, args.input_format, args.input_table, role="input")
    output = locations.locate(args.output, args.output_format, args.output_table, role="output")
    if args.rejects is None and args.rejects_format is None and args.rejects_table is None:
        rejects = locations.rejects_beside(output)
    else:
        uri = args.rejects or (output.uri if output.format == "sql" else None)
        if uri is None:
            raise UsageError("--rejects-table and --rejects-format go with --rejects URI")
        rejects = locations.locate(uri, args.rejects_format, args.rejects_table, role="rejects")
    return batch.Run(
        input=source,
        output=output,
        rejects=rejects,
        id_column=args.id_column,
        chunk_rows=args.chunk_rows,
        max_reject_fraction=args.max_reject_fraction,
        if_exists=args.if_exists,
        run_id=args.run_id or uuid.uuid4().hex,
    )


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[threading.Event]:
    """A Job that is deleted gets SIGTERM, a terminal SIGINT: the run unwinds as from an interrupt, so staged
    output is removed, not published. The first signal is acted on between chunks, where the run stops cleanly:
    an interrupt raised at any moment can leave a lock of a background thread's pool held, and the run hung. A
    second one acts at once."""
    stopping = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt
        stopping.set()

    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopping
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _say(message: str) -> None:
    print(f"steward-predict: {message}", file=sys.stderr, flush=True)
