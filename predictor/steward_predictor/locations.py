"""Where batch rows are read from and written to: CSV and Parquet files (local, or objects and prefixes of part files
on object storage through fsspec) and SQL tables as named on the command line, how their columns are read, and the
errors met there."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa

from steward_predictor.defaults import FORMATS, Format

SUFFIXES: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# Parquet column chunks are read a buffer at a time instead of a whole row group at once, so memory does not
# grow with the size of the row groups a file was written with.
READ_BUFFER = 1 << 20
# CSV is parsed a block at a time; Arrow holds a few dozen blocks' worth while it parses, so a small block
# keeps memory small without costing speed.
CSV_BLOCK = 256 << 10
LOCAL_SCHEMES = ("", "file")
# Names under a prefix that are not parts: markers (_SUCCESS) and hidden keys (a run's .steward-tmp-<run>/), which
# Spark, Hive and Arrow skip too.
NOT_PARTS = (".", "_")
# The client libraries behind fsspec's filesystems: their exceptions (no credentials, an endpoint that does not
# answer) say what went wrong with a location, and are reported as such rather than as a crash.
STORAGE_CLIENTS = frozenset(
    {"botocore", "aiobotocore", "s3fs", "fsspec", "aiohttp", "gcsfs", "google", "adlfs", "azure"}
)


class LocationError(Exception):
    """A location cannot be used as given (format unknown, table missing, output already there); the message
    says what to change."""


class DatasetError(Exception):
    """Reading or writing failed: a file that is missing or malformed, a database that refused."""


class PublishingError(DatasetError):
    """Publishing failed past the point where it could be undone (old keys of a prefix left beside the new
    ones); the message says what the target holds now."""


@dataclass(frozen=True)
class Location:
    """A file (CSV or Parquet), a prefix of part files on object storage, or a table in a database, as named on
    the command line."""

    uri: str
    """A local path or file:// URL, an fsspec URL (s3://bucket/key, or s3://bucket/prefix/ for part files), or a
    SQLAlchemy database URL."""
    format: Format
    table: str | None = None
    """Table name, optionally schema-qualified (analytics.scores), for the sql format."""

    @property
    def path(self) -> Path:
        """A local file's path."""
        return Path(self.uri.removeprefix("file://"))

    @property
    def remote(self) -> bool:
        """On object storage (s3://) or another fsspec filesystem, rather than a local file or a database."""
        return self.format != "sql" and _scheme(self.uri) not in LOCAL_SCHEMES

    @property
    def prefix(self) -> bool:
        """Remote and named with a trailing slash: a "directory" of part files, not one object."""
        return self.remote and self.uri.endswith("/")

    @property
    def display(self) -> str:
        """The location without any password, for logs and summaries."""
        if self.remote:
            return _without_credentials(self.uri)
        if self.format != "sql":
            return str(self.path)
        url = sa.engine.make_url(self.uri).render_as_string(hide_password=True)
        return f"{url} table {self.table}"

    def filesystem(self) -> tuple[Any, str]:
        """A remote location's fsspec filesystem, with credentials from the environment as its client reads them
        (for S3: AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...), and the path on it without a trailing slash."""
        filesystem, path = fsspec.core.url_to_fs(self.uri)
        return filesystem, str(path).rstrip("/")

    def same_as(self, other: Location) -> bool:
        if self.format == "sql" or other.format == "sql":
            return self.format == other.format and self.uri == other.uri and self.table == other.table
        if self.remote or other.remote:
            return self.remote and other.remote and self.uri.rstrip("/") == other.uri.rstrip("/")
        return self.path.resolve() == other.path.resolve()


def locate(uri: str, format: Format | None = None, table: str | None = None, *, role: str = "input") -> Location:
    """A location from a path or URL, its format inferred from the suffix (.csv, .parquet) or, for a database
    URL (postgresql://, sqlite:///), sql. A URL of a filesystem fsspec knows (s3://, gs://, memory://, ...) names
    a file there, or with a trailing slash a prefix of part files. `role` names the flags in messages
    (--input-table, ...)."""
    scheme = _scheme(uri)
    suffix = Path(uri.split("?", 1)[0].rstrip("/")).suffix.lower()
    if scheme not in LOCAL_SCHEMES and format != "sql":
        if scheme in fsspec.available_protocols() or scheme in fsspec.registry:
            return _remote(uri, scheme, SUFFIXES.get(suffix) if format is None else format, table, role)
        if format is not None or suffix in SUFFIXES:
            raise LocationError(
                f"--{role} {uri}: no filesystem is known for {scheme}://; files are read and written at local "
                "paths, s3:// and the other URLs fsspec knows"
            )
    if format is None:
        if scheme not in LOCAL_SCHEMES:
            format = "sql"
        elif suffix in SUFFIXES:
            format = SUFFIXES[suffix]
        else:
            raise LocationError(
                f"--{role} {uri}: cannot tell the format from the name; name it .csv or .parquet, or pass "
                f"--{role}-format {{{','.join(FORMATS)}}}"
            )
    if format != "sql":
        if table is not None:
            raise LocationError(f"--{role}-table goes only with a database URL, not with the file {uri}")
        return Location(uri=uri, format=format)
    url = _database_url(uri, role)
    if not table:
        raise LocationError(f"--{role} {uri} is a database: name the table with --{role}-table")
    return Location(uri=url, format="sql", table=table)


def _remote(uri: str, scheme: str, format: Format | None, table: str | None, role: str) -> Location:
    """A file or prefix on a filesystem fsspec knows, checked without reaching it."""
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as error:
        raise LocationError(f"--{role} {uri}: {error}") from None
    if format is None:
        raise LocationError(
            f"--{role} {uri}: cannot tell the format from the name; name it .csv or .parquet, or pass "
            f"--{role}-format csv or parquet"
        )
    if table is not None:
        raise LocationError(f"--{role}-table goes only with a database URL, not with the file {uri}")
    if role != "input" and "/" not in uri.split("://", 1)[1].strip("/"):
        # Temporary keys go beside the output, and replacing a prefix removes every key under it.
        raise LocationError(f"--{role} {uri}: name a key or a prefix inside the bucket, not the bucket itself")
    return Location(uri=uri, format=format)


def rejects_beside(output: Location) -> Location:
    """Where rejected rows go unless told: out.csv -> out.rejects.csv; s3://b/scores/ -> s3://b/scores.rejects/;
    table scores -> scores_rejects."""
    if output.format == "sql":
        return Location(uri=output.uri, format="sql", table=f"{output.table}_rejects")
    if output.remote:
        head, _, name = output.uri.rstrip("/").rpartition("/")
        return Location(uri=f"{head}/{_rejects_name(name)}{'/' if output.prefix else ''}", format=output.format)
    path = output.path
    return Location(uri=str(path.with_name(_rejects_name(path.name))), format=output.format)


def _rejects_name(name: str) -> str:
    suffix = Path(name).suffix
    suffix = suffix if suffix.lower() in SUFFIXES else ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    return f"{stem}.rejects{suffix}"


def exists(location: Location) -> bool:
    """Whether a file, an object or any key under a prefix is there."""
    if not location.remote:
        return location.path.exists()
    with file_errors(location):
        filesystem, path = location.filesystem()
        # Listings are cached per filesystem; another writer may have added keys since the last.
        filesystem.invalidate_cache(path)
        return bool(filesystem.exists(path))


def parts(location: Location) -> list[Location]:
    """The files a location's rows are read from, in order: the file itself, or the files directly under a
    prefix in the order of their names, markers (_SUCCESS) and hidden keys left out."""
    if not location.remote:
        return [location]
    with file_errors(location):
        filesystem, path = location.filesystem()
        if not location.prefix and filesystem.isfile(path):
            return [location]
        entries = filesystem.ls(path, detail=True)
    names = sorted(
        str(entry["name"])
        for entry in entries
        if entry["type"] == "file" and not str(entry["name"]).rstrip("/").rpartition("/")[2].startswith(NOT_PARTS)
    )
    if not names:
        raise DatasetError(f"{location.display} holds no files to read (names starting with . or _ are skipped)")
    return [Location(uri=filesystem.unstrip_protocol(name), format=location.format) for name in names]


@contextlib.contextmanager
def opened(location: Location) -> Iterator[str | IO[bytes]]:
    """A file to read as Arrow reads it: a local path, or a remote object opened for reading."""
    if not location.remote:
        yield str(location.path)
        return
    filesystem, path = location.filesystem()
    with filesystem.open(path, "rb") as file:
        yield file


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def _without_credentials(uri: str) -> str:
    """A URL without the user and password some filesystems take in it."""
    split = urllib.parse.urlsplit(uri)
    if "@" not in split.netloc:
        return uri
    return urllib.parse.urlunsplit(split._replace(netloc=split.netloc.rpartition("@")[2]))


def _database_url(uri: str, role: str) -> str:
    try:
        url = sa.engine.make_url(uri)
        url.get_dialect()
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as error:
        raise LocationError(
            f"--{role} {uri} is neither a file (a local path, s3:// or another fsspec URL) nor a database URL "
            f"SQLAlchemy knows ({error})"
        ) from None
    if url.drivername == "postgresql":
        # Under SQLAlchemy 2.0 the bare scheme means psycopg2; psycopg (3) is the driver Steward ships with.
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # One name per file, so that input and output in the same file share one connection and lock.
        url = url.set(database=str(Path(url.database).resolve()))
    return url.render_as_string(hide_password=False)


def split_table(location: Location) -> tuple[str | None, str]:
    """A table location's schema (None when unqualified) and table name."""
    table = location.table or ""
    schema, _, name = table.rpartition(".")
    return schema or None, name


def csv_header(source: str | Path | IO[bytes]) -> list[str]:
    """The column names of a CSV file (a path, or a file open for reading), read from its first block alone."""
    reader = pa_csv.open_csv(source, read_options=pa_csv.ReadOptions(use_threads=False, block_size=CSV_BLOCK))
    try:
        return list(reader.schema.names)
    finally:
        reader.close()


@contextlib.contextmanager
def file_errors(location: Location, *, writing: bool = False) -> Iterator[None]:
    """Whatever goes wrong reading (or `writing`) the file at `location`, as a DatasetError that names it; on
    object storage also what its client raises (no credentials, a refused request)."""
    doing = "cannot write " if writing and location.remote else ""
    try:
        yield
    except FileNotFoundError as error:
        if writing:
            raise DatasetError(f"cannot write {location.display}: {one_line(error)}") from error
        detail = one_line(error)
        # The client's reason, where it says more than the path does (a bucket that does not exist).
        path = location.uri.split("://", 1)[-1].rstrip("/")
        reason = f" ({detail})" if location.remote and detail and path not in detail else ""
        raise DatasetError(f"{location.display} does not exist{reason}") from None
    except (OSError, pa.ArrowException, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DatasetError(f"{doing}{location.display}: {one_line(error)}") from error
    except ValueError as error:
        # pandas and Arrow report a malformed file (a column missing, a row too long) as ValueError.
        raise DatasetError(f"{doing}{location.display}: {one_line(error)}") from error
    except Exception as error:
        if type(error).__module__.partition(".")[0] not in STORAGE_CLIENTS:
            raise
        raise DatasetError(f"{doing}{location.display}: {_storage_problem(error)}") from error


def _storage_problem(error: Exception) -> str:
    problem = one_line(error) or type(error).__name__
    if type(error).__name__ == "NoCredentialsError":
        problem += (
            "; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (a location's credentialsSecret passes its keys as "
            "environment variables), AWS_PROFILE, or give the pod a role"
        )
    return problem


def one_line(error: BaseException) -> str:
    """An error's message on one line, for a message that is one line."""
    return " ".join(str(error).split())


@contextlib.contextmanager
def database_errors(location: Location | str) -> Iterator[None]:
    """Whatever the database at `location` (a location or a URL) refuses, as a DatasetError in the driver's words."""
    where = location.display if isinstance(location, Location) else sa.engine.make_url(location).render_as_string()
    try:
        yield
    except sa.exc.NoSuchTableError as error:
        raise DatasetError(f"{where}: no table {error}") from None
    except sa.exc.SQLAlchemyError as error:
        # The driver's own message, without SQLAlchemy's long background link.
        detail = str(getattr(error, "orig", None) or error).strip()
        raise DatasetError(f"{where}: {detail}") from error
