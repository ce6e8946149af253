"""The predictor's command-line tools, `steward-predict` and `steward-bundle`: their flags, help and exit codes.
Only the standard library and light modules are imported here, so `--help` and a bad flag answer at once; the
module that does the work is imported once the arguments are parsed."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steward_predictor.defaults import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_MAX_REJECT_FRACTION,
    DEFAULT_URI,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    FORMATS,
    IF_EXISTS,
)
from steward_predictor.settings import allow_pickle, trusted_types

EXIT_CODES = """\
exit codes:
  0  scored: output and rejects published
  1  runtime failure: a file, object or database could not be read or written (missing, no
     credentials, refused), or the run was interrupted; the output is as it was
  2  usage error: a bad flag, an unknown format, an --id-column the input lacks, or an output
     that exists without --if-exists; nothing was written
  3  rejected: more than --max-reject-fraction of the rows failed validation, or the input
     lacks a column the model needs; the output is as it was, the rejects are published
  4  bundle refused: digest mismatch, untrusted types, a pickle without --allow-pickle, or
     golden examples that no longer reproduce (training/serving parity)"""

DESCRIPTION = """\
Score CSV or Parquet files, local or on object storage, or a SQL table with a Steward model bundle.

Rows are read --chunk-rows at a time, so memory does not grow with the input, and every chunk is
validated against the bundle's feature schema exactly as online requests are. Rows that fail go to
the rejects with the reasons; problems the schema's policy only counts are scored and counted.
Input columns the model does not use are ignored; only --id-column is copied through.

Output columns: row (the row's position in the input, from 0), the --id-column if named,
request_id (<run id>-<row>: reproducible, and joinable with outcomes that arrive later),
model_version, bundle_digest, scored_at (UTC), prediction, and for classifiers one
probability_<class> column per class.
Rejects columns: row, the --id-column, the model's input columns as read (as text), reasons.

Local files are written to a hidden file beside the target and renamed into place at the end;
tables are written in one transaction (new tables under a staging name, renamed at the end). A run
that fails or is killed leaves the output as it was (a killed run may leave a hidden
.NAME.*.partial file). Rejects follow --if-exists append; otherwise they replace the rejects of an
earlier run.

Object storage: a file may also be an s3:// URL, or one of any filesystem fsspec knows (gs://,
abfs://, ...). A URL ending in / is a prefix of part files. As input, the files directly under it
are read in name order (names starting with . or _, such as _SUCCESS, are skipped; each CSV part
has its own header); as output, it gets parts of about 256 MiB and, last, an empty _SUCCESS. S3
credentials come from the environment as boto reads them: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL or
AWS_ENDPOINT_URL_S3 (an S3-compatible store), AWS_PROFILE, or the pod's role. A ModelDeployment's
credentialsSecret passes its Secret's keys as environment variables: name the keys so.

Object stores cannot rename, so output there is written under .steward-tmp-<run id>/ beside the
target and copied into place once the run succeeded; a run that fails or is interrupted deletes
those keys, a killed one (SIGKILL, out of memory) leaves them, and perhaps an unfinished multipart
upload (a lifecycle rule can abort those). An object is replaced by one copy: readers see the old
or the new one. A prefix's parts are copied one by one, then (--if-exists replace) the old keys
under it are deleted and _SUCCESS is written: a reader listing the prefix before that may see part
of the new output, and of the old; wait for _SUCCESS. --if-exists fail checks again just before
the copy, but cannot stop another writer in between; append adds parts to a prefix, and rewrites
an object with the new rows after the old.

Before scoring, the bundle's digest is checked and its golden examples are replayed: a bundle whose
outputs no longer reproduce is refused. A JSON summary goes to stdout at the end, progress to stderr.
Database passwords may come from the driver's environment (PGPASSWORD) rather than the URL; URLs are
shown without them."""

EXAMPLES = """\
examples:
  steward-predict batch --input customers.parquet --output scores.parquet --id-column customer_id
  steward-predict batch --bundle s3://models/churn/v3/ --digest sha256:9f2c... \\
      --input postgresql://reader@warehouse/analytics --input-table customers \\
      --output postgresql://writer@warehouse/analytics --output-table churn_scores --if-exists replace
  AWS_ENDPOINT_URL=http://minio.data:9000 steward-predict batch --input s3://exports/customers/ \\
      --input-format parquet --output s3://scores/churn/ --output-format parquet --if-exists replace"""


LOCATION_HELP = "a .csv or .parquet file, a prefix/ of part files (s3://...), or a database URL"


def predict(argv: Sequence[str] | None = None) -> int:
    """steward-predict."""
    args = predict_parser().parse_args(argv)
    if args.command == "stream":
        from steward_predictor import streaming  # noqa: PLC0415 -- loads the Kafka client and scikit-learn

        return streaming.run(args)
    from steward_predictor import predicting  # noqa: PLC0415 -- loads pandas, pyarrow and scikit-learn

    return predicting.run(args)


def bundle(argv: Sequence[str] | None = None) -> int:
    """steward-bundle."""
    args = bundle_parser().parse_args(argv)
    from steward_predictor import bundling  # noqa: PLC0415 -- loads pandas and scikit-learn

    return bundling.run(args)


def predict_parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="steward-predict",
        description="Steward's predictor: scores rows with a sealed scikit-learn model bundle.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    batch = commands.add_parser(
        "batch",
        help="score a CSV file, Parquet file or SQL table, chunk by chunk",
        description=DESCRIPTION,
        epilog=f"{EXIT_CODES}\n\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = batch.add_argument_group("model")
    model.add_argument("--bundle", default=DEFAULT_URI, metavar="URI", help="bundle path or URL (default: %(default)s)")
    model.add_argument("--digest", metavar="SHA256", help="refuse the bundle unless its digest is this (sha256:...)")
    _trust_flags(model)
    model.add_argument(
        "--compare-with",
        metavar="URI",
        help="the incumbent version's bundle: score every chunk with it too (nothing of it is written) and compare "
        "the two versions' answers row by row; the comparison goes into the summary (a release's shadow run)",
    )
    model.add_argument(
        "--compare-digest", metavar="SHA256", help="refuse the --compare-with bundle unless its digest is this"
    )
    model.add_argument(
        "--shadow",
        metavar="URI",
        help="a challenger's bundle: score every chunk with it too (nothing of it is written) and report its answers "
        "to the monitor under this run's request ids, so outcomes posted for this run's output judge both versions "
        "(an incumbent's run during a release); one that cannot be loaded or fails is left out, this run goes on",
    )
    model.add_argument(
        "--shadow-digest", metavar="SHA256", help="leave the --shadow bundle out unless its digest is this"
    )
    data = batch.add_argument_group("data (formats: csv, parquet, sql; inferred from the suffix or the URL scheme)")
    data.add_argument("--input", required=True, metavar="URI", help=LOCATION_HELP)
    data.add_argument("--input-table", metavar="NAME", help="table to read, with a database URL ([schema.]name)")
    data.add_argument("--input-format", choices=FORMATS, help="override the inferred input format")
    data.add_argument("--output", required=True, metavar="URI", help=LOCATION_HELP)
    data.add_argument("--output-table", metavar="NAME", help="table to write, with a database URL ([schema.]name)")
    data.add_argument("--output-format", choices=FORMATS, help="override the inferred output format")
    data.add_argument(
        "--rejects",
        metavar="URI",
        help="where rejected rows go (default: beside the output: OUT.rejects.csv, OUT.rejects/, or table "
        "OUTTABLE_rejects)",
    )
    data.add_argument("--rejects-table", metavar="NAME", help="table for rejected rows, with a database URL")
    data.add_argument("--rejects-format", choices=FORMATS, help="override the inferred rejects format")
    data.add_argument("--id-column", metavar="NAME", help="an input column to copy to every scored and rejected row")
    data.add_argument(
        "--if-exists",
        choices=IF_EXISTS,
        default="fail",
        help="when the output exists: fail (default, exit 2), replace it whole, or append to it",
    )
    run = batch.add_argument_group("run")
    run.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        metavar="N",
        help="rows read, validated and scored at a time; bounds memory (default: %(default)s)",
    )
    run.add_argument(
        "--max-reject-fraction",
        type=float,
        default=DEFAULT_MAX_REJECT_FRACTION,
        metavar="F",
        help="fail (exit 3, scores not published) if more than this fraction of rows is rejected "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--run-id",
        default=None,
        metavar="ID",
        help="prefix of the request ids <run id>-<row> (default: a new random hex id per run)",
    )
    run.add_argument(
        "--summary-file",
        metavar="PATH",
        help="also write the summary here, compact and at most 4 KiB, and on a failed run what failed: in a pod, "
        "/dev/termination-log, where Kubernetes keeps it as the container's termination message",
    )
    monitor = batch.add_argument_group("monitor")
    monitor.add_argument(
        "--model",
        metavar="NAME",
        default=os.environ.get("STEWARD_MODEL"),
        help="the ModelDeployment's name (STEWARD_MODEL)",
    )
    _monitor_flags(
        monitor,
        "report every scored row here under its request id, waiting for the monitor rather than "
        "losing a row; not a --compare-with run's, which serve no one",
    )
    monitor.add_argument(
        "--monitor-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="longest wait for the monitor to take more rows (once: a monitor that takes nothing that long is not "
        "waited for again), and at the end for the last of them; what it has not taken is counted in the summary, "
        "and the run succeeds all the same (default: %(default)s)",
    )
    _stream_parser(commands)
    return root


STREAM_DESCRIPTION = """\
Score a Kafka topic into another, every record exactly once.

Each record's value is a JSON object of features, validated against the bundle's feature schema
exactly as online requests are. Its answer goes to the output topic under the same key, as JSON:
{"requestId", "version", "prediction", "probabilities" (classifiers)}. A record that cannot be
scored (not JSON, refused by the schema, or the model failed on it) goes to the dead-letter topic
as it came, with the reason in the x-steward-error header.

Answers, dead letters and the consumed offsets are written in one Kafka transaction, committed
every --commit-interval-ms, and the input is read read_committed: after a crash, a restart or a
rebalance, every input record appears in the output or the dead letters exactly once for
read_committed readers. Workers of one
ModelDeployment share the consumer group; each needs its own --transactional-id, the same every
time it starts (its pod's ordinal), so a restarted worker fences its predecessor at once.

During a release, --challenger-percent of the records (by a stable hash of the key) are answered
by the challenger; with --shadow the challenger also scores every record for its metrics and the
prediction log only, and never writes to the output topic. Metrics (the predictor's, per version,
and the stream's lag per partition) are served on --port at /metrics; /ready answers 200 while
records are taken."""


STREAM_EXIT_CODES = """\
exit codes:
  0  stopped (SIGTERM or SIGINT): the batch under way was committed or aborted, the group left
  1  Kafka failed for good: this worker was fenced by another with its transactional id, or the
     client hit an error it cannot recover from; a restart takes its partitions over cleanly
  2  usage error: a bad flag, an unreadable --client-config
  4  bundle refused: digest mismatch, untrusted types, or golden examples that no longer reproduce"""


def _stream_parser(commands: Any) -> None:
    stream = commands.add_parser(
        "stream",
        help="score a Kafka topic into another, exactly once",
        description=STREAM_DESCRIPTION,
        epilog=STREAM_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    environ = os.environ.get
    model = stream.add_argument_group("model")
    model.add_argument(
        "--model", default=environ("STEWARD_MODEL", "model"), help="the ModelDeployment's name (STEWARD_MODEL)"
    )
    model.add_argument(
        "--bundle", default=DEFAULT_URI, metavar="URI", help="the incumbent's bundle (default: %(default)s)"
    )
    model.add_argument("--digest", metavar="SHA256", help="refuse the incumbent's bundle unless its digest is this")
    model.add_argument(
        "--version", metavar="VERSION", help="refuse the incumbent's bundle unless it holds this version"
    )
    model.add_argument("--challenger-bundle", metavar="URI", help="the challenger's bundle, during a release")
    model.add_argument(
        "--challenger-digest", metavar="SHA256", help="refuse the challenger's bundle unless its digest is this"
    )
    model.add_argument(
        "--challenger-version", metavar="VERSION", help="refuse the challenger's bundle unless it holds this version"
    )
    model.add_argument(
        "--challenger-percent",
        type=int,
        default=0,
        metavar="P",
        help="records the challenger answers, 0-100 (default: %(default)s)",
    )
    model.add_argument(
        "--shadow", action="store_true", help="the challenger also scores every record, for evidence only"
    )
    _trust_flags(model)
    kafka = stream.add_argument_group("kafka")
    kafka.add_argument("--brokers", required=True, metavar="HOST:PORT,...", help="bootstrap brokers")
    kafka.add_argument("--input-topic", required=True, metavar="TOPIC")
    kafka.add_argument("--output-topic", required=True, metavar="TOPIC")
    kafka.add_argument("--dead-letter-topic", required=True, metavar="TOPIC")
    kafka.add_argument("--group", required=True, metavar="ID", help="the consumer group every worker shares")
    kafka.add_argument(
        "--transactional-id", required=True, metavar="ID", help="this worker's own, stable across restarts"
    )
    kafka.add_argument(
        "--client-config", type=Path, metavar="FILE", help="librdkafka settings (SASL, TLS), key=value per line"
    )
    run = stream.add_argument_group("run")
    run.add_argument(
        "--max-records",
        type=_positive,
        default=500,
        metavar="N",
        help="records per batch and transaction (default: %(default)s)",
    )
    run.add_argument(
        "--max-wait-ms",
        type=_positive,
        default=25,
        metavar="MS",
        help="longest wait to fill a batch; at low rates, what a record waits to be scored (default: %(default)s)",
    )
    run.add_argument(
        "--commit-interval-ms",
        type=_positive,
        default=100,
        metavar="MS",
        help="longest a transaction stays open: answers become visible to read_committed readers when it commits "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--transaction-records",
        type=_positive,
        default=5000,
        metavar="N",
        help="records after which a transaction commits sooner (default: %(default)s)",
    )
    run.add_argument(
        "--max-record-bytes",
        type=_positive,
        default=1024 * 1024,
        metavar="BYTES",
        help="larger records are dead-lettered (default: %(default)s)",
    )
    run.add_argument(
        "--dead-letter-ceiling",
        type=float,
        default=0.5,
        metavar="F",
        help="the largest share of a version's recent records that may be dead-lettered; a challenger over it loses "
        "its share, an incumbent over it halts the worker (default: %(default)s)",
    )
    run.add_argument("--port", type=int, default=8080, help="/metrics, /ready and /healthz (default: %(default)s)")
    run.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")  # noqa: S104
    _monitor_flags(stream.add_argument_group("monitor"), "report every prediction here")


def _monitor_flags(monitor: argparse._ArgumentGroup, reporting: str) -> None:
    """Where predictions are reported, and under which ModelDeployment's namespace."""
    environ = os.environ.get
    monitor.add_argument(
        "--monitor-url",
        metavar="URL",
        default=environ("STEWARD_MONITOR_URL"),
        help=f"{reporting} (STEWARD_MONITOR_URL)",
    )
    monitor.add_argument("--monitor-token", default=environ("STEWARD_MONITOR_TOKEN"), help=argparse.SUPPRESS)
    monitor.add_argument(
        "--namespace",
        metavar="NAME",
        default=environ("STEWARD_NAMESPACE", ""),
        help="the ModelDeployment's namespace (STEWARD_NAMESPACE)",
    )


def _trust_flags(model: argparse._ArgumentGroup) -> None:
    """What a bundle's pipeline may hold, beyond what Steward trusts."""
    model.add_argument(
        "--allow-pickle",
        action="store_true",
        default=allow_pickle(),
        help="load a pipeline stored as a plain pickle; only from a source you trust (STEWARD_ALLOW_PICKLE=true)",
    )
    model.add_argument(
        "--trust-type",
        action="append",
        default=list(trusted_types()),
        metavar="TYPE",
        help="a type the pipeline may contain beyond scikit-learn's own; repeatable (STEWARD_TRUSTED_TYPES)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def bundle_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steward-bundle",
        description="Seal a fitted scikit-learn pipeline with its feature schema, training baselines, held-out "
        "results and golden examples; inspect a bundle; verify that it loads and reproduces its golden examples.",
        epilog=f"Exit codes: {EXIT_OK} ok, {EXIT_FAILED} the bundle failed a check (or could not be built), "
        f"{EXIT_USAGE} bad arguments.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="seal a fitted pipeline into a new bundle directory")
    build.add_argument("output", type=Path, help="new directory to write (must not exist)")
    build.add_argument("--pipeline", type=Path, required=True, help="fitted pipeline: .skops, or .joblib/.pkl")
    build.add_argument(
        "--train", type=Path, required=True, help="training data the pipeline was fitted on (.csv/.parquet)"
    )
    build.add_argument("--target", required=True, help="name of the target column in --train and --holdout")
    build.add_argument("--holdout", type=Path, help="held-out data for evaluation and golden examples")
    build.add_argument("--version", required=True, help="model version, e.g. 2024-06-01")
    build.add_argument("--feature-set-version", default="1", help="version of the feature code (default %(default)s)")
    build.add_argument("--schema-overrides", type=Path, help='JSON: {"policy": {...}, "features": {"name": {...}}}')
    build.add_argument("--trust-type", action="append", default=[], help="type to trust when reading a .skops pipeline")
    build.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a .joblib/.pkl pipeline (runs code: only your own files), and seal the bundle with pickle "
        "instead of skops",
    )

    inspect = commands.add_parser("inspect", help="show a bundle's metadata, schema and held-out results")
    inspect.add_argument("bundle", nargs="?", default=DEFAULT_URI, help="path or URI (default %(default)s)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")

    verify = commands.add_parser(
        "verify", help="check digests, trusted types and golden-example parity, as the server does at start"
    )
    verify.add_argument("bundle", nargs="?", default=DEFAULT_URI, help="path or URI (default %(default)s)")
    verify.add_argument("--digest", help="require this sha256 digest")
    verify.add_argument("--trust-type", action="append", default=[], help="extra type to trust; repeatable")
    verify.add_argument("--allow-pickle", action="store_true", help="accept a pickled pipeline")

    return parser


if __name__ == "__main__":
    sys.exit(predict())
