"""Batch rows read and written: CSV and Parquet files (local, or on object storage) and SQL tables, read in chunks
(a chunk ahead, in the background) and written so that a run which fails or is killed publishes nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine import Transaction as DatabaseTransaction

from steward_predictor import locations
from steward_predictor.defaults import IfExists
from steward_predictor.locations import (
    CSV_BLOCK,
    READ_BUFFER,
    DatasetError,
    Location,
    csv_header,
    database_errors,
    file_errors,
    split_table,
)
from steward_predictor.table_writers import TableWriter
from steward_predictor.writers import FileWriter, ObjectWriter, Writer

Prepared = TypeVar("Prepared")
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


class Transaction:
    """The reads and writes of one batch run: one connection and transaction per database, files staged beside
    their targets. Leaving it without `commit` (an error, an interrupt) rolls back and removes the staging.
    `run_id` names the temporary keys of output on object storage."""

    def __init__(self, run_id: str | None = None) -> None:
        self._run_id = run_id
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
            return locations.exists(location)
        schema, name = split_table(location)
        with database_errors(location):
            return sa.inspect(self._connection(location)).has_table(name, schema=schema)

    def columns(self, location: Location) -> list[str]:
        """The column names of a file or table, in order; of a prefix, those of its first part."""
        if location.format != "sql":
            first = locations.parts(location)[0]
            with file_errors(first), locations.opened(first) as source:
                if location.format == "csv":
                    return csv_header(source)
                return list(pq.read_schema(source).names)
        schema, name = split_table(location)
        with database_errors(location):
            inspector = sa.inspect(self._connection(location))
            if not inspector.has_table(name, schema=schema):
                raise DatasetError(f"{location.display} does not exist")
            return [str(column["name"]) for column in inspector.get_columns(name, schema=schema)]

    def count(self, location: Location) -> int | None:
        """The number of rows, when it is known without reading them (Parquet metadata)."""
        if location.format != "parquet":
            return None
        rows = 0
        for part in locations.parts(location):
            with file_errors(part), locations.opened(part) as source:
                rows += int(pq.read_metadata(source).num_rows)
        return rows

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
        value instead of once per row. The parts under a prefix are read one after the other; a chunk never
        spans two."""
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
            writer = TableWriter(self._connection(location), location, if_exists)
        elif location.remote:
            writer = ObjectWriter(location, if_exists, self._run_id)
        else:
            writer = FileWriter(location, if_exists)
        self._writers.append(writer)
        return writer

    def commit(self) -> None:
        """Commit every database transaction; published tables become visible."""
        for url, (connection, transaction) in self._connections.items():
            with database_errors(url):
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
            with database_errors(location):
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
        parts = locations.parts(location)
        yield from _unless_empty(self._read_csv_part(part, options, chunk_rows, numbers, categories) for part in parts)

    def _read_csv_part(
        self,
        part: Location,
        options: pa_csv.ConvertOptions,
        chunk_rows: int,
        numbers: Sequence[str],
        categories: Sequence[str],
    ) -> Generator[pd.DataFrame, None, None]:
        with file_errors(part), locations.opened(part) as source:
            reader = pa_csv.open_csv(
                source,
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
        parts = locations.parts(location)
        yield from _unless_empty(
            self._read_parquet_part(part, columns, chunk_rows, numbers, categories=categories) for part in parts
        )

    def _read_parquet_part(
        self,
        part: Location,
        columns: Sequence[str],
        chunk_rows: int,
        numbers: Sequence[str],
        *,
        categories: Sequence[str],
    ) -> Generator[pd.DataFrame, None, None]:
        with file_errors(part), locations.opened(part) as file:
            schema = pq.read_schema(file)
            # Text columns come straight from the file's dictionary pages as categoricals.
            coded = [
                name for name in categories if schema.get_field_index(name) >= 0 and _is_text(schema.field(name).type)
            ]
        with (
            file_errors(part),
            locations.opened(part) as file,
            pq.ParquetFile(file, pre_buffer=False, buffer_size=READ_BUFFER, read_dictionary=coded) as source,
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
        schema, name = split_table(location)
        with database_errors(location):
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


def _unless_empty(parts: Iterable[Generator[pd.DataFrame, None, None]]) -> Iterator[pd.DataFrame]:
    """The chunks of every part, in order, leaving out empty ones (an empty part, say) unless every part is
    empty: then the last, which still carries the columns."""
    empty: pd.DataFrame | None = None
    yielded = False
    for chunks in parts:
        with contextlib.closing(chunks):
            for frame in chunks:
                if len(frame):
                    yielded = True
                    yield frame
                else:
                    empty = frame
    if empty is not None and not yielded:
        yield empty


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
