"""Where a batch run's scores and rejects go: files staged beside their targets and renamed into place, tables
staged in the run's transaction; published whole or not at all."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from steward_predictor.defaults import IfExists
from steward_predictor.locations import (
    READ_BUFFER,
    DatasetError,
    Location,
    csv_header,
    database_errors,
    file_errors,
    split_table,
)

# A file is staged under this suffix beside its target until it is published by a rename.
PARTIAL_SUFFIX = ".partial"
WRITE_BUFFER = 1 << 20
# A Parquet column gets a dictionary when its distinct values are at most this share of the first chunk's rows.
DICTIONARY_SHARE = 0.1
# PostgreSQL truncates longer identifiers.
MAX_IDENTIFIER = 63


class Writer(Protocol):
    """Rows written in chunks to a staging place, published whole or not at all."""

    def write(self, table: pa.Table) -> None:
        """Append one chunk; the first chunk fixes the columns and their types."""

    def publish(self) -> None:
        """Make everything written visible at the target (for a database: at the transaction's commit)."""

    def discard(self) -> None:
        """Throw away everything written; the target stays as it was."""


class FileWriter:
    """A CSV or Parquet file staged as a hidden file beside its target and renamed into place, so readers
    see the old file or the whole new one, never a part. A killed run leaves at most the hidden file.

    Each chunk is written in a background thread while the caller scores the next one (Arrow writes outside
    the GIL); at most one chunk is in flight, so memory stays bounded."""

    def __init__(self, location: Location, if_exists: IfExists) -> None:
        self._location = location
        self._target = location.path
        self._if_exists = if_exists
        self._format_writer: pa_csv.CSVWriter | pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._sink: pa.NativeFile | None = None
        self._pending: Future[None] | None = None
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steward-write")
        with file_errors(location, writing=True):
            self._target.parent.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(
                prefix=f".{self._target.name}.", suffix=PARTIAL_SUFFIX, dir=self._target.parent
            )
            # mkstemp makes the file private; published output gets the usual permissions.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(descriptor, 0o666 & ~umask)
            os.close(descriptor)
            self._staging: Path | None = Path(name)

    def write(self, table: pa.Table) -> None:
        self._wait()
        self._pending = self._background.submit(self._write, table)

    def publish(self) -> None:
        if self._staging is None:
            return
        self._wait()
        self._background.shutdown()
        if self._format_writer is None or self._sink is None:
            raise DatasetError(f"nothing was written to {self._location.display}")
        with file_errors(self._location, writing=True):
            self._format_writer.close()
            self._sink.close()
            _sync(self._staging)
            if self._if_exists == "fail":
                self._publish_without_replacing()
            else:
                self._staging.replace(self._target)
            self._staging = None
            _sync(self._target.parent)

    def _publish_without_replacing(self) -> None:
        """Output that appeared while scoring is left alone: a hard link never replaces."""
        if self._staging is None:
            return
        appeared = DatasetError(f"{self._location.display} appeared while scoring; it was left as it is")
        try:
            os.link(self._staging, self._target)
        except FileExistsError:
            raise appeared from None
        except OSError:
            # A filesystem without hard links: check, then rename, and accept the moment in between.
            if self._target.exists():
                raise appeared from None
            self._staging.replace(self._target)
        else:
            self._staging.unlink()

    def discard(self) -> None:
        if self._staging is None:
            return
        with contextlib.suppress(Exception):
            self._wait()
        self._background.shutdown()
        with contextlib.suppress(Exception):
            if self._format_writer is not None:
                self._format_writer.close()
        with contextlib.suppress(Exception):
            if self._sink is not None:
                self._sink.close()
        self._staging.unlink(missing_ok=True)
        self._staging = None

    def _wait(self) -> None:
        """Wait for the chunk in flight; its error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write(self, table: pa.Table) -> None:
        with file_errors(self._location, writing=True):
            if self._format_writer is None or self._schema is None:
                self._schema = table.schema
                self._format_writer = self._open(table)
            table = _conform(table, self._schema, self._location)
            if self._location.format == "csv":
                table = _timestamps_as_text(table)
            self._format_writer.write_table(table)

    def _open(self, first: pa.Table) -> pa_csv.CSVWriter | pq.ParquetWriter:
        schema = first.schema
        existing = self._if_exists == "append" and self._target.exists()
        self._sink = sink = pa.OSFile(str(self._staging), mode="w")
        if self._location.format == "csv":
            if existing:
                self._copy_existing_csv(sink, schema)
            options = pa_csv.WriteOptions(include_header=not existing)
            return pa_csv.CSVWriter(sink, _timestamps_as_text(schema.empty_table()).schema, write_options=options)
        if not existing:
            return pq.ParquetWriter(sink, schema, use_dictionary=_repetitive(first))
        with pq.ParquetFile(self._target, pre_buffer=False, buffer_size=READ_BUFFER) as previous:
            if previous.schema_arrow.names != schema.names:
                raise DatasetError(
                    f"cannot append to {self._location.display}: it has the columns {previous.schema_arrow.names}, "
                    f"the scores have {schema.names}"
                )
            # Parquet cannot grow in place: the new file starts as a copy of the old one.
            self._schema = previous.schema_arrow
            writer = pq.ParquetWriter(sink, previous.schema_arrow)
            for batch in previous.iter_batches():
                writer.write_batch(batch)
        return writer

    def _copy_existing_csv(self, sink: pa.NativeFile, schema: pa.Schema) -> None:
        """Start the staged file as a copy of the existing one, to append to it and still publish atomically."""
        header = csv_header(self._target)
        if header != schema.names:
            raise DatasetError(
                f"cannot append to {self._location.display}: it has the columns {header}, the scores have "
                f"{schema.names}"
            )
        last = b"\n"
        with self._target.open("rb") as source:
            for block in iter(lambda: source.read(WRITE_BUFFER), b""):
                sink.write(block)
                last = block
        if last[-1:] != b"\n":
            sink.write(b"\n")


class TableWriter:
    """A SQL table written in the run's transaction. New tables are built under a staging name and renamed
    into place at publish, so the old table stays readable (and unlocked) until the very end; appended rows
    go straight in. Either way nothing is visible before the commit, and a killed run commits nothing."""

    def __init__(self, connection: Connection, location: Location, if_exists: IfExists) -> None:
        self._connection = connection
        self._location = location
        self._if_exists = if_exists
        self._schema_name, self._name = split_table(location)
        self._table: sa.Table | None = None
        self._staged = False
        self._done = False

    def write(self, table: pa.Table) -> None:
        with database_errors(self._location):
            if self._table is None:
                self._table = self._open(table.schema)
            if table.num_rows == 0:
                return
            if self._connection.dialect.driver == "psycopg":
                self._copy(self._table, table)
            else:
                self._connection.execute(self._table.insert(), table.to_pylist())

    def publish(self) -> None:
        if self._done:
            return
        if self._table is None:
            raise DatasetError(f"nothing was written to {self._location.display}")
        self._done = True
        if not self._staged:
            return
        with database_errors(self._location):
            if sa.inspect(self._connection).has_table(self._name, schema=self._schema_name):
                if self._if_exists == "fail":
                    raise DatasetError(f"{self._location.display} appeared while scoring; it was left as it is")
                target = sa.Table(self._name, sa.MetaData(), schema=self._schema_name)
                target.drop(self._connection)
            preparer = self._connection.dialect.identifier_preparer
            # Both names are quoted by the dialect; nothing from outside reaches the statement unquoted.
            statement = f"ALTER TABLE {preparer.format_table(self._table)} RENAME TO {preparer.quote(self._name)}"
            self._connection.execute(sa.text(statement))

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        if self._staged and self._table is not None:
            # The rollback removes the staging table anyway; dropping it matters when the same transaction
            # goes on to commit other tables (the rejects of a run that failed).
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._table.drop(self._connection)

    def _copy(self, target: sa.Table, table: pa.Table) -> None:
        """Rows into PostgreSQL by COPY, as CSV that Arrow writes in one go: row-by-row INSERTs spend most of
        a run in the driver. Arrow's CSV says what PostgreSQL's does: an empty field is NULL, "" is empty."""
        preparer = self._connection.dialect.identifier_preparer
        names = ", ".join(preparer.quote(name) for name in table.column_names)
        # Every name is quoted by the dialect; nothing from outside reaches the statement unquoted.
        statement = f"COPY {preparer.format_table(target)} ({names}) FROM STDIN (FORMAT csv)"
        text = pa.BufferOutputStream()
        pa_csv.write_csv(_timestamps_as_text(table), text, pa_csv.WriteOptions(include_header=False))
        cursor = self._connection.connection.cursor()
        try:
            with cursor.copy(statement) as copy:
                copy.write(text.getvalue())
        finally:
            cursor.close()

    def _open(self, schema: pa.Schema) -> sa.Table:
        inspector = sa.inspect(self._connection)
        if self._if_exists == "append" and inspector.has_table(self._name, schema=self._schema_name):
            # The table's own column types, so that values are bound the way the table stores them.
            existing = sa.Table(self._name, sa.MetaData(), schema=self._schema_name, autoload_with=self._connection)
            missing = [name for name in schema.names if name not in existing.c]
            if missing:
                raise DatasetError(f"cannot append to {self._location.display}: it has no columns {missing}")
            return existing
        staging = f"{self._name}_staging_{secrets.token_hex(4)}"
        if len(staging) > MAX_IDENTIFIER:
            staging = f"steward_staging_{secrets.token_hex(8)}"
        table = sa.Table(
            staging,
            sa.MetaData(),
            *(sa.Column(field.name, _sql_type(field.type), nullable=True) for field in schema),
            schema=self._schema_name,
        )
        table.create(self._connection)
        self._staged = True
        return table


def _repetitive(table: pa.Table) -> list[str] | bool:
    """Columns worth a Parquet dictionary, judged by the first chunk: few distinct values (the model version,
    the prediction of a classifier). Trying one on unique values (request ids, probabilities) costs time for
    nothing."""
    if table.num_rows == 0:
        return True
    limit = DICTIONARY_SHARE * table.num_rows
    # A column with more distinct values than that in its first rows has at least as many in all of them: the
    # few rows settle it for unique columns without hashing the whole chunk.
    head = table.slice(0, int(limit) + 1)
    return [
        name
        for name, column, first in zip(table.column_names, table.columns, head.columns, strict=True)
        if pc.count_distinct(first).as_py() <= limit and pc.count_distinct(column).as_py() <= limit
    ]


def _timestamps_as_text(table: pa.Table) -> pa.Table:
    """Timestamps formatted once per distinct value: Arrow's CSV writer formats every one anew, slowly, and
    a scored chunk carries one timestamp on every row."""
    for index, column in enumerate(table.columns):
        if pa.types.is_timestamp(column.type):
            chunks = [
                pa.DictionaryArray.from_arrays(part.indices, part.dictionary.cast(pa.string())).dictionary_decode()
                for part in column.dictionary_encode().chunks
            ]
            table = table.set_column(index, table.field(index).name, pa.chunked_array(chunks, type=pa.string()))
    return table


def _conform(table: pa.Table, schema: pa.Schema, location: Location) -> pa.Table:
    """A chunk with the types of the first one (a CSV chunk whose ids all happen to be missing, say)."""
    if table.schema.equals(schema):
        return table
    if table.schema.names != schema.names:
        raise DatasetError(f"{location.display}: columns {table.schema.names} where {schema.names} were written")
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise DatasetError(f"{location.display}: a chunk's values do not fit the columns' types ({error})") from error


# Arrow types and the SQL column types they are stored as; anything else is stored as text.
_SQL_TYPES: tuple[tuple[Callable[[pa.DataType], bool], Callable[[pa.DataType], sa.types.TypeEngine[Any]]], ...] = (
    (pa.types.is_boolean, lambda _: sa.Boolean()),
    (pa.types.is_integer, lambda _: sa.BigInteger()),
    (pa.types.is_floating, lambda _: sa.Double()),
    (pa.types.is_decimal, lambda _: sa.Numeric()),
    (pa.types.is_timestamp, lambda kind: sa.DateTime(timezone=kind.tz is not None)),
    (pa.types.is_date, lambda _: sa.Date()),
)


def _sql_type(kind: pa.DataType) -> sa.types.TypeEngine[Any]:
    for matches, sql_type in _SQL_TYPES:
        if matches(kind):
            return sql_type(kind)
    return sa.Text()


def _sync(path: Path) -> None:
    """Flush a file, or a directory's entries (a rename), to disk: published output survives a crash of the
    machine, not just of the process."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
