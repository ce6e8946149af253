"""The monitor's durable store: prediction events and outcomes keyed by request id, in SQLite (embedded, the
default) or PostgreSQL (production), through SQLAlchemy. Writes are idempotent: an event sent again is
recognised by its key and not stored twice."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from steward_monitor.pairing import Pair
from steward_monitor.quality import Scored
from steward_monitor.records import Outcome, Prediction

METADATA = sa.MetaData()
PREDICTIONS = sa.Table(
    "steward_predictions",
    METADATA,
    sa.Column("namespace", sa.String(256), primary_key=True),
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("version", sa.String(256), primary_key=True),
    sa.Column("request_id", sa.String(256), primary_key=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("variant", sa.String(16), nullable=False),
    sa.Column("prediction", sa.Text, nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("features", sa.Text),
)
OUTCOMES = sa.Table(
    "steward_outcomes",
    METADATA,
    sa.Column("namespace", sa.String(256), primary_key=True),
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("request_id", sa.String(256), primary_key=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("label", sa.Text, nullable=False),
)


Key = tuple[str, ...]


class Store:
    """One database. `write` stores a batch in one transaction, so a batch is there whole or not at all."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name not in {"sqlite", "postgresql"}:
            raise ValueError(f"the monitor stores in SQLite or PostgreSQL, not {self.engine.dialect.name} ({url})")
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        METADATA.create_all(self.engine)

    def write(self, predictions: Sequence[Prediction], outcomes: Sequence[Outcome]) -> tuple[set[Key], set[Key]]:
        """Store both kinds in one transaction; returns the keys of the records that were new (the others were
        stored already: sent again)."""
        with self.engine.begin() as connection:
            return (
                self._insert(connection, PREDICTIONS, [_prediction_row(record) for record in predictions]),
                self._insert(connection, OUTCOMES, [_outcome_row(record) for record in outcomes]),
            )

    def count(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            return {
                "predictions": connection.scalar(sa.select(sa.func.count()).select_from(PREDICTIONS)) or 0,
                "outcomes": connection.scalar(sa.select(sa.func.count()).select_from(OUTCOMES)) or 0,
            }

    def scored(
        self, namespace: str, model: str, since: datetime | None = None, until: datetime | None = None
    ) -> dict[str, list[Scored]]:
        """Each version's predictions of one model (made at or after `since` and before `until`: a cohort, matured
        when `until` is a label delay ago), with their outcomes where known."""
        joined = sa.and_(
            PREDICTIONS.c.namespace == OUTCOMES.c.namespace,
            PREDICTIONS.c.model == OUTCOMES.c.model,
            PREDICTIONS.c.request_id == OUTCOMES.c.request_id,
        )
        query = (
            sa.select(
                PREDICTIONS.c.version,
                PREDICTIONS.c.prediction,
                PREDICTIONS.c.score,
                PREDICTIONS.c.time,
                OUTCOMES.c.label,
                OUTCOMES.c.time.label("labelled"),
            )
            .select_from(PREDICTIONS.outerjoin(OUTCOMES, joined))
            .where(PREDICTIONS.c.namespace == namespace, PREDICTIONS.c.model == model)
        )
        if since is not None:
            query = query.where(PREDICTIONS.c.time >= since)
        if until is not None:
            query = query.where(PREDICTIONS.c.time < until)
        found: dict[str, list[Scored]] = {}
        with self.engine.connect() as connection:
            for version, prediction, score, made, label, labelled in connection.execute(query):
                delay = None if labelled is None else (_aware(labelled) - _aware(made)).total_seconds()
                found.setdefault(version, []).append(
                    Scored(json.loads(prediction), score, None if label is None else json.loads(label), delay)
                )
        return found

    def pairs(
        self, namespace: str, model: str, incumbent: str, challenger: str, since: datetime | None = None
    ) -> list[Pair]:
        """The requests both versions answered (the incumbent's made at or after `since`), with outcomes."""
        first, second = PREDICTIONS.alias("incumbent"), PREDICTIONS.alias("challenger")
        same_request = sa.and_(
            first.c.namespace == second.c.namespace,
            first.c.model == second.c.model,
            first.c.request_id == second.c.request_id,
        )
        outcome = sa.and_(
            OUTCOMES.c.namespace == first.c.namespace,
            OUTCOMES.c.model == first.c.model,
            OUTCOMES.c.request_id == first.c.request_id,
        )
        query = (
            sa.select(first.c.prediction, second.c.prediction, first.c.score, second.c.score, OUTCOMES.c.label)
            .select_from(first.join(second, same_request).outerjoin(OUTCOMES, outcome))
            .where(
                first.c.namespace == namespace,
                first.c.model == model,
                first.c.version == incumbent,
                second.c.version == challenger,
            )
        )
        if since is not None:
            query = query.where(first.c.time >= since)
        with self.engine.connect() as connection:
            return [
                Pair(
                    json.loads(mine), json.loads(theirs), score_i, score_c, None if label is None else json.loads(label)
                )
                for mine, theirs, score_i, score_c, label in connection.execute(query)
            ]

    def versions(self, since: datetime) -> dict[tuple[str, str, str], datetime]:
        """(namespace, model, version) of every version with predictions at or after `since`, with the time of its
        latest one."""
        version = (PREDICTIONS.c.namespace, PREDICTIONS.c.model, PREDICTIONS.c.version)
        query = (
            sa.select(*version, sa.func.max(PREDICTIONS.c.time)).where(PREDICTIONS.c.time >= since).group_by(*version)
        )
        with self.engine.connect() as connection:
            return {
                (namespace, model, name): _aware(latest) for namespace, model, name, latest in connection.execute(query)
            }

    def purge(self, before: datetime) -> int:
        """Delete what is older than `before` (the retention setting); returns how many records went."""
        with self.engine.begin() as connection:
            gone = connection.execute(sa.delete(PREDICTIONS).where(PREDICTIONS.c.time < before)).rowcount
            gone += connection.execute(sa.delete(OUTCOMES).where(OUTCOMES.c.time < before)).rowcount
        return int(gone)

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, connection: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> set[Key]:
        if not rows:
            return set()
        keys = [column.name for column in table.primary_key.columns]
        unique = list({tuple(row[key] for key in keys): row for row in rows}.values())
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        # RETURNING names the rows actually inserted: a driver's rowcount for many rows is not to be trusted.
        statement = dialect.insert(table).on_conflict_do_nothing(index_elements=keys).returning(*table.primary_key)
        return {tuple(row) for row in connection.execute(statement, unique)}


def _prediction_row(record: Prediction) -> dict[str, Any]:
    return {
        "namespace": record.namespace,
        "model": record.model,
        "version": record.version,
        "request_id": record.request_id,
        "time": record.time,
        "variant": record.variant,
        "prediction": json.dumps(record.prediction),
        "score": record.score,
        "features": None if record.features is None else json.dumps(record.features, default=str),
    }


def _outcome_row(record: Outcome) -> dict[str, Any]:
    return {
        "namespace": record.namespace,
        "model": record.model,
        "request_id": record.request_id,
        "time": record.time,
        "label": json.dumps(record.label),
    }


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; the store writes UTC only.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    # Write-ahead logging: readers never block the writer, and a commit is one fsync of the log.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
