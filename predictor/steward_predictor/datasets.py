"""Where batch rows come from and go to: CSV and Parquet files and SQL tables, read in chunks and written so
that a run which fails or is killed publishes nothing."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine import Transaction as DatabaseTransaction

from steward_predictor.defaults import FORMATS, Format, IfExists

Prepared = TypeVar("Prepared")
SUFFIXES: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# A file is staged under this suffix beside its target until it is published by a rename.
PARTIAL_SUFFIX = ".partial"
WRITE_BUFFER = 1 << 20
# Parquet column chunks are read a buffer at a time instead of a whole row group at once, so memory does not
# grow with the size of the row groups a file was written with.
READ_BUFFER = 1 << 20
# CSV is parsed a block at a time; Arrow holds a few dozen blocks' worth while it parses, so a small block
# keeps memory small without costing speed.
CSV_BLOCK = 256 << 10
# What reads as missing in CSV: pandas' defaults, so that files mean here what they meant in training.
NA_VALUES = [
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
]
# A Parquet column gets a dictionary when its distinct values are at most this share of the first chunk's rows.
DICTIONARY_SHARE = 0.1
# PostgreSQL truncates longer identifiers.
MAX_IDENTIFIER = 63


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


class Writer(Protocol):
    """Rows written in chunks to a staging place, published whole or not at all."""

    def write(self, table: pa.Table) -> None:
        """Append one chunk; the first chunk fixes the columns and their types."""

    def publish(self) -> None:
        """Make everything written visible at the target (for a database: at the transaction's commit)."""

    def discard(self) -> None:
        """Throw away everything written; the target stays as it was."""


class Transaction:
    """The reads and writes of one batch run: one connection and transaction per database, files staged beside
    their targets. Leaving it without `commit` (an error, an interrupt) rolls back and removes the staging."""

    def __init__(self) -> None:
        self._engines: dict[str, Engine] = {}
        self._connections: dict[str, tuple[Connection, DatabaseTransaction]] = {}
        self._writers: list[Writer] = []

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def exists(self, location: Location) -> bool:
        if location.format != "sql":
            return location.path.exists()
        schema, name = _split_table(location)
        with _database_errors(location):
            return sa.inspect(self._connection(location)).has_table(name, schema=schema)

    def columns(self, location: Location) -> list[str]:
        """The column names of a file or table, in order."""
        try:
            if location.format == "csv":
                return _csv_header(location.path)
            if location.format == "parquet":
                return list(pq.read_schema(location.path).names)
        except FileNotFoundError:
            raise DatasetError(f"{location.display} does not exist") from None
        except (OSError, ValueError, pa.ArrowException) as error:
            raise DatasetError(f"cannot read {location.display}: {error}") from error
        schema, name = _split_table(location)
        with _database_errors(location):
            inspector = sa.inspect(self._connection(location))
            if not inspector.has_table(name, schema=schema):
                raise DatasetError(f"{location.display} does not exist")
            return [str(column["name"]) for column in inspector.get_columns(name, schema=schema)]

    def count(self, location: Location) -> int | None:
        """The number of rows, when it is known without reading them (Parquet metadata)."""
        if location.format != "parquet":
            return None
        with _file_errors(location):
            return int(pq.read_metadata(location.path).num_rows)

    def read(
        self,
        location: Location,
        columns: Sequence[str],
        *,
        chunk_rows: int,
        prepare: Callable[[pd.DataFrame], Prepared],
        numbers: Collection[str] = (),
        texts: Collection[str] = (),
        categories: Collection[str] = (),
    ) -> Iterator[Prepared]:
        """Chunks of at most `chunk_rows` rows with the named columns, at least one (empty) chunk, each put
        through `prepare` (validation, say). Files are read and prepared a chunk ahead in the background, so
        memory holds two. Columns in `numbers` come out as numbers where the values are numbers, even in text or
        decimal form; values that are not stay as they were, for validation to name. Columns in `texts` are read
        from CSV as text, not as whatever the values look like (a postcode stays "01234"). Text columns in
        `categories` (few distinct values) come out of files as pandas categoricals, decoded once per distinct
        value instead of once per row."""
        numeric = [name for name in numbers if name in columns]
        coded = [name for name in categories if name in columns]
        if location.format == "csv":
            frames = self._read_csv(location, columns, chunk_rows, numeric, texts=texts, categories=coded)
            return _read_ahead(frames, prepare)
        if location.format == "parquet":
            return _read_ahead(self._read_parquet(location, columns, chunk_rows, numeric, categories=coded), prepare)
        # The connection may be writing too (input and output in one database): no second thread on it.
        return map(prepare, self._read_table(location, columns, chunk_rows, numeric))

    def writer(self, location: Location, if_exists: IfExists) -> Writer:
        """A writer for `location`. With "fail" the target must not exist when the writer publishes; with
        "replace" it is replaced whole; with "append" the new rows are added to what is there."""
        writer: Writer
        if location.format == "sql":
            writer = _TableWriter(self._connection(location), location, if_exists)
        else:
            writer = _FileWriter(location, if_exists)
        self._writers.append(writer)
        return writer

    def commit(self) -> None:
        """Commit every database transaction; published tables become visible."""
        for url, (connection, transaction) in self._connections.items():
            with _database_errors(url):
                transaction.commit()
                connection.close()
        self._connections.clear()

    def close(self) -> None:
        """Discard whatever was not published, roll back what was not committed, and release the connections."""
        for writer in self._writers:
            writer.discard()
        self._writers.clear()
        for connection, transaction in self._connections.values():
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                transaction.rollback()
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                connection.close()
        self._connections.clear()
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    def _connection(self, location: Location) -> Connection:
        if location.uri not in self._connections:
            with _database_errors(location):
                engine = self._engines[location.uri] = _engine(location.uri)
                connection = engine.connect()
                self._connections[location.uri] = (connection, connection.begin())
        return self._connections[location.uri][0]

    def _read_csv(
        self,
        location: Location,
        columns: Sequence[str],
        chunk_rows: int,
        numbers: Sequence[str],
        *,
        texts: Collection[str],
        categories: Sequence[str],
    ) -> Generator[pd.DataFrame, None, None]:
        # Numbers are read as text and converted per chunk: a column whose type was inferred from the first
        # block would fail the whole run at the first stray word, where validation should reject one row.
        as_text = {name: pa.string() for name in [*numbers, *texts] if name in columns}
        options = pa_csv.ConvertOptions(
            include_columns=list(columns),
            column_types=as_text,
            null_values=NA_VALUES,
            strings_can_be_null=True,
        )
        with _file_errors(location):
            reader = pa_csv.open_csv(
                location.path,
                convert_options=options,
                read_options=pa_csv.ReadOptions(use_threads=False, block_size=CSV_BLOCK),
            )
            try:
                for table in _rechunked(reader, reader.schema, chunk_rows):
                    yield _csv_frame(table, numbers, categories)
            finally:
                reader.close()

    def _read_parquet(
        self,
        location: Location,
        columns: Sequence[str],
        chunk_rows: int,
        numbers: Sequence[str],
        *,
        categories: Sequence[str],
    ) -> Generator[pd.DataFrame, None, None]:
        with _file_errors(location):
            schema = pq.read_schema(location.path)
            # Text columns come straight from the file's dictionary pages as categoricals.
            coded = [
                name for name in categories if schema.get_field_index(name) >= 0 and _is_text(schema.field(name).type)
            ]
        with (
            _file_errors(location),
            pq.ParquetFile(location.path, pre_buffer=False, buffer_size=READ_BUFFER, read_dictionary=coded) as source,
        ):
            empty = True
            for batch in source.iter_batches(batch_size=chunk_rows, columns=list(columns)):
                empty = False
                yield _with_numbers(batch.to_pandas(), numbers)
            if empty:
                yield source.schema_arrow.empty_table().select(list(columns)).to_pandas()

    def _read_table(
        self, location: Location, columns: Sequence[str], chunk_rows: int, numbers: Sequence[str]
    ) -> Generator[pd.DataFrame, None, None]:
        connection = self._connection(location)
        schema, name = _split_table(location)
        with _database_errors(location):
            table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=connection)
            # A server-side cursor: the database hands over one chunk at a time, not the whole result.
            result = connection.execute(
                sa.select(*(table.c[column] for column in columns)),
                execution_options={"stream_results": True, "yield_per": chunk_rows},
            )
            try:
                empty = True
                for rows in result.partitions():
                    empty = False
                    yield _with_numbers(pd.DataFrame.from_records(rows, columns=list(columns)), numbers)
                if empty:
                    yield pd.DataFrame({column: pd.Series([], dtype=object) for column in columns})
            finally:
                result.close()


class _FileWriter:
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
        with _file_errors(location, writing=True):
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
        with _file_errors(self._location, writing=True):
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
        with _file_errors(self._location, writing=True):
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
        header = _csv_header(self._target)
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


class _TableWriter:
    """A SQL table written in the run's transaction. New tables are built under a staging name and renamed
    into place at publish, so the old table stays readable (and unlocked) until the very end; appended rows
    go straight in. Either way nothing is visible before the commit, and a killed run commits nothing."""

    def __init__(self, connection: Connection, location: Location, if_exists: IfExists) -> None:
        self._connection = connection
        self._location = location
        self._if_exists = if_exists
        self._schema_name, self._name = _split_table(location)
        self._table: sa.Table | None = None
        self._staged = False
        self._done = False

    def write(self, table: pa.Table) -> None:
        with _database_errors(self._location):
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
        with _database_errors(self._location):
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


def _rechunked(batches: Iterable[pa.RecordBatch], schema: pa.Schema, rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `rows` rows (the last one fewer, and at least one) from batches of any size."""
    pending: list[pa.RecordBatch] = []
    count = 0
    emitted = False
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending, schema=schema)
            yield table.slice(0, rows)
            emitted = True
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count or not emitted:
        yield pa.Table.from_batches(pending, schema=schema)


def _csv_frame(table: pa.Table, numbers: Sequence[str], categories: Sequence[str] = ()) -> pd.DataFrame:
    """A chunk of CSV text with its numeric columns as numbers: all at once where every value parses, value by
    value where one does not (that value stays text, for validation to name); and its `categories` columns
    as categoricals."""
    parsed: dict[str, np.ndarray] = {}
    for name in categories:
        index = table.schema.get_field_index(name)
        if _is_text(table.schema.field(index).type):
            table = table.set_column(index, name, pc.dictionary_encode(table.column(index)))
    for name in numbers:
        index = table.schema.get_field_index(name)
        try:
            table = table.set_column(index, name, pc.cast(table.column(index), pa.float64()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            parsed[name] = _as_numbers(table.column(index).to_numpy(zero_copy_only=False))
    frame: pd.DataFrame = table.to_pandas()
    for name, values in parsed.items():
        frame[name] = values
    return frame


def _read_ahead(
    chunks: Generator[pd.DataFrame, None, None], prepare: Callable[[pd.DataFrame], Prepared]
) -> Iterator[Prepared]:
    """The chunks put through `prepare`, the next one read and prepared in a background thread while the
    caller works on this one. Parsing runs mostly outside the GIL, so reading then costs little wall time on a
    second core."""

    def following() -> tuple[Prepared] | None:
        frame = next(chunks, None)
        return None if frame is None else (prepare(frame),)

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="steward-read") as background:
            pending = background.submit(following)
            while (ready := pending.result()) is not None:
                pending = background.submit(following)
                yield ready[0]
    finally:
        chunks.close()


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


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


def _engine(uri: str) -> Engine:
    engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
    if engine.dialect.name == "sqlite":
        # Python's sqlite3 commits on its own before DDL, which would publish a half-made table; hand it
        # autocommit and begin the transaction here instead, so that CREATE TABLE is part of it.
        @sa.event.listens_for(engine, "connect")
        def _no_implicit_transactions(connection: Any, record: Any) -> None:
            connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


def _split_table(location: Location) -> tuple[str | None, str]:
    table = location.table or ""
    schema, _, name = table.rpartition(".")
    return schema or None, name


def _with_numbers(frame: pd.DataFrame, numbers: Sequence[str]) -> pd.DataFrame:
    """A chunk whose numeric columns hold numbers where they can (text or decimals from Parquet or SQL)."""
    for name in numbers:
        if frame[name].dtype == object:
            frame[name] = _as_numbers(frame[name].to_numpy())
    return frame


def _as_numbers(values: np.ndarray) -> np.ndarray:
    """Numbers written as text (CSV columns with a stray non-number) or decimals (SQL NUMERIC) as floats;
    anything else untouched, so that validation names it."""
    out = values.copy()
    convertible = np.fromiter((isinstance(value, str | Decimal) for value in values), dtype=bool, count=len(values))
    if convertible.any():
        positions = np.flatnonzero(convertible)
        parsed = pd.to_numeric(pd.Series(values[positions], dtype=object), errors="coerce").to_numpy(dtype=float)
        good = ~np.isnan(parsed)
        out[positions[good]] = parsed[good]
    return out


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


def _csv_header(path: Path) -> list[str]:
    reader = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(use_threads=False, block_size=CSV_BLOCK))
    try:
        return list(reader.schema.names)
    finally:
        reader.close()


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


@contextlib.contextmanager
def _file_errors(location: Location, *, writing: bool = False) -> Iterator[None]:
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
def _database_errors(location: Location | str) -> Iterator[None]:
    where = location.display if isinstance(location, Location) else sa.engine.make_url(location).render_as_string()
    try:
        yield
    except sa.exc.NoSuchTableError as error:
        raise DatasetError(f"{where}: no table {error}") from None
    except sa.exc.SQLAlchemyError as error:
        # The driver's own message, without SQLAlchemy's long background link.
        detail = str(getattr(error, "orig", None) or error).strip()
        raise DatasetError(f"{where}: {detail}") from error


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
