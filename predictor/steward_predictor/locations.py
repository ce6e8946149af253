"""Where batch rows are read from and written to: CSV and Parquet files and SQL tables as named on the command line,
how their columns are read, and the errors met there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


class LocationError(Exception):
    """A location cannot be used as given (format unknown, table missing, output already there); the message
    says what to change."""


class DatasetError(Exception):
    """Reading or writing failed: a file that is missing or malformed, a database that refused."""


@dataclass(frozen=True)
class Location:
    """A file (CSV or Parquet) or a table in a database, as named on the command line."""

    uri: str
    """A local path or file:// URL, or a SQLAlchemy database URL."""
    format: Format
    table: str | None = None
    """Table name, optionally schema-qualified (analytics.scores), for the sql format."""

    @property
    def path(self) -> Path:
        return Path(self.uri.removeprefix("file://"))

    @property
    def display(self) -> str:
        """The location without any password, for logs and summaries."""
        if self.format != "sql":
            return str(self.path)
        url = sa.engine.make_url(self.uri).render_as_string(hide_password=True)
        return f"{url} table {self.table}"

    def same_as(self, other: Location) -> bool:
        if self.format == "sql" or other.format == "sql":
            return self.format == other.format and self.uri == other.uri and self.table == other.table
        return self.path.resolve() == other.path.resolve()


def locate(uri: str, format: Format | None = None, table: str | None = None, *, role: str = "input") -> Location:
    """A location from a path or URL, its format inferred from the suffix (.csv, .parquet) or, for a database
    URL (postgresql://, sqlite:///), sql. `role` names the flags in messages (--input-table, ...)."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    suffix = Path(uri.split("?", 1)[0]).suffix.lower()
    if scheme not in ("", "file") and format != "sql" and (format is not None or suffix in SUFFIXES):
        raise LocationError(f"--{role} {uri}: only local files are read and written; copy the file locally first")
    if format is None:
        if scheme not in ("", "file"):
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


def rejects_beside(output: Location) -> Location:
    """Where rejected rows go unless told: out.csv -> out.rejects.csv; table scores -> scores_rejects."""
    if output.format == "sql":
        return Location(uri=output.uri, format="sql", table=f"{output.table}_rejects")
    path = output.path
    suffix = path.suffix if path.suffix.lower() in SUFFIXES else ""
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return Location(uri=str(path.with_name(f"{stem}.rejects{suffix}")), format=output.format)


def _database_url(uri: str, role: str) -> str:
    try:
        url = sa.engine.make_url(uri)
        url.get_dialect()
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as error:
        raise LocationError(
            f"--{role} {uri} is neither a local file nor a database URL SQLAlchemy knows ({error})"
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


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file, read from its first block alone."""
    reader = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(use_threads=False, block_size=CSV_BLOCK))
    try:
        return list(reader.schema.names)
    finally:
        reader.close()


@contextlib.contextmanager
def file_errors(location: Location, *, writing: bool = False) -> Iterator[None]:
    """Whatever goes wrong reading (or `writing`) the file at `location`, as a DatasetError that names it."""
    try:
        yield
    except FileNotFoundError as error:
        if writing:
            raise DatasetError(f"cannot write {location.display}: {error}") from error
        raise DatasetError(f"{location.display} does not exist") from None
    except (OSError, pa.ArrowException, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DatasetError(f"{location.display}: {error}") from error
    except ValueError as error:
        # pandas and Arrow report a malformed file (a column missing, a row too long) as ValueError.
        raise DatasetError(f"{location.display}: {error}") from error


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
