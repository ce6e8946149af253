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
from types import FrameType

from threadpoolctl import threadpool_limits

from steward_predictor import allocators, batch, datasets, locations, scoring
from steward_predictor.bundles import BundleError
from steward_predictor.defaults import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_REJECTED, EXIT_USAGE, UsageError


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
    try:
        settings = _settings(args)
        with _stopped_by_signals() as stopping, datasets.Transaction(settings.run_id) as transaction:
            columns = batch.prepare(transaction, settings)
            scorer = scoring.load(
                args.bundle, digest=args.digest, allow_pickle=args.allow_pickle, trusted_types=args.trust_type
            )
            bundle = scorer.bundle
            _say(
                f"scoring {settings.input.display} with model {bundle.metadata.model_version} ({bundle.digest}) "
                f"into {settings.output.display}, run {settings.run_id}"
            )
            summary = batch.score_batch(transaction, settings, scorer, columns, stopping=stopping)
    except (UsageError, locations.LocationError) as error:
        _say(f"error: {error}")
        return EXIT_USAGE
    except BundleError as error:
        _say(f"bundle refused: {error}")
        return EXIT_REFUSED
    except batch.RejectedError as error:
        if error.summary is not None:
            print(error.summary.as_json(), flush=True)
        _say(f"rejected: {error}")
        return EXIT_REJECTED
    except locations.DatasetError as error:
        # Publishing that failed past undoing says itself what the output holds.
        unpublished = "" if isinstance(error, locations.PublishingError) else "; nothing was published"
        _say(f"failed: {error}{unpublished}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("interrupted; nothing was published")
        return EXIT_FAILED
    print(summary.as_json(), flush=True)
    return EXIT_OK


def _settings(args: argparse.Namespace) -> batch.Run:
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
