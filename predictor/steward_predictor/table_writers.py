"""A batch run's scores and rejects written to a SQL table, in the run's transaction: a new table staged under
another name and renamed into place at publish, appended rows written straight in."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from steward_predictor.defaults import IfExists
from steward_predictor.locations import DatasetError, Location, database_errors, split_table
from steward_predictor.writers import timestamps_as_text

# PostgreSQL truncates longer identifiers.
MAX_IDENTIFIER = 63


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
        pa_csv.write_csv(timestamps_as_text(table), text, pa_csv.WriteOptions(include_header=False))
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
