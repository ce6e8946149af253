"""A stream's records, scored: which live version answers each, what goes to the output topic, and what to the
dead-letter topic with its reason. No Kafka here: the worker (streaming.py) hands over each batch it consumed and
produces what comes back, in one transaction with the batch's offsets.

Routing is by record: a stable hash of its key (or, without one, of where it sits in the topic) sends a record to
the challenger when it falls below the challenger's share, so a key keeps its version for as long as the split
holds. In a shadow stage the challenger scores every record too, for evidence only: its answers feed its metrics
and the monitor's prediction log, and never the output topic."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from steward_predictor.defaults import REQUEST_ID
from steward_predictor.metrics import ModelMetrics
from steward_predictor.scoring import Scored, Scorer

PROTOCOL = "kafka"
"""The `protocol` label of a stream's records in the requests metric."""
SCORED, REJECTED, FAILED = 200, 422, 500
"""A record's outcome, counted as the HTTP status an online request with the same fate is answered with."""
BUCKETS = 10_000
"""Routing resolution: a challenger's share is honoured to 0.01 %."""
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
DEFAULT_CEILING = 0.5
"""Dead-letter ceiling: the largest share of a version's recent records that may be dead-lettered."""
CEILING_WINDOW = 1000
"""The recent records the ceiling is judged over, per version."""
CEILING_LEAST = 50
"""Fewer recent records than this are too few to judge: a short burst of poison is dead-lettered, not a halt."""

ERROR_HEADER = "x-steward-error"
VERSION_HEADER = "x-steward-model-version"
SOURCE_HEADER = "x-steward-source"
REQUEST_ID_HEADER = "x-request-id"


@dataclass(frozen=True)
class Record:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @cached_property
    def request_id(self) -> str:
        """The record's key when it makes a usable request id, else where it sits: `<topic>-<partition>-<offset>`.
        Every version that scores the record reports it under this id, so the monitor pairs their answers."""
        if self.key is not None:
            try:
                text = self.key.decode()
            except UnicodeDecodeError:
                text = ""
            if REQUEST_ID.fullmatch(text):
                return text
        return f"{self.topic}-{self.partition}-{self.offset}"

    @property
    def bucket(self) -> int:
        """0 to BUCKETS - 1, stable for the record's key (or place, without one)."""
        routed = self.key if self.key is not None else self.source.encode()
        return int.from_bytes(hashlib.blake2b(routed, digest_size=8).digest(), "big") % BUCKETS


@dataclass(frozen=True)
class Message:
    """One record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class Version:
    """A live version as the stream scores with it: its scorer (with its observers attached) and its metrics."""

    scorer: Scorer
    metrics: ModelMetrics | None = None

    @property
    def name(self) -> str:
        return self.scorer.bundle.version

    def count(self, code: int, records: int) -> None:
        if self.metrics is not None and records:
            self.metrics.request(PROTOCOL, code, records)


@dataclass(frozen=True)
class Routing:
    """Who answers: the incumbent, and a challenger taking `challenger_percent` of the records into the output,
    or (`shadow`) scoring every record for evidence only."""

    incumbent: Version
    challenger: Version | None = None
    challenger_percent: int = 0
    shadow: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.challenger_percent <= 100:
            raise ValueError(f"the challenger's share must be 0 to 100 %, not {self.challenger_percent}")
        if (self.challenger_percent or self.shadow) and self.challenger is None:
            raise ValueError("a challenger share or a shadow needs a challenger")


@dataclass(frozen=True)
class Topics:
    output: str
    dead_letter: str


class CeilingExceededError(RuntimeError):
    """The incumbent dead-letters more than the ceiling allows: the batch is not committed, and the worker stops
    taking records until it is replaced (a rollback, a fix) rather than dead-letter the whole stream."""


@dataclass
class Ceiling:
    """The share of a version's recent records that may be dead-lettered before its records stop going to it."""

    share: float = DEFAULT_CEILING
    window: int = CEILING_WINDOW
    least: int = CEILING_LEAST
    _recent: dict[str, deque[bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise ValueError(f"the dead-letter ceiling must be above 0 and at most 1, not {self.share}")

    def add(self, version: str, failed: Sequence[bool]) -> None:
        self._recent.setdefault(version, deque(maxlen=self.window)).extend(failed)

    def exceeded(self, version: str) -> float | None:
        """The dead-lettered share of `version`'s recent records when it is over the ceiling, else None."""
        recent = self._recent.get(version)
        if recent is None or len(recent) < self.least:
            return None
        found = sum(recent) / len(recent)
        return found if found > self.share else None

    def forget(self, version: str) -> None:
        self._recent.pop(version, None)


@dataclass
class Batch:
    """What one consumed batch comes to."""

    messages: list[Message] = field(default_factory=list)
    answered: dict[str, int] = field(default_factory=dict)
    """Records written to the output, by the version that answered them."""
    dead_lettered: int = 0


@dataclass
class Stream:
    """Scores consumed batches for one ModelDeployment's live versions."""

    routing: Routing
    topics: Topics
    ceiling: Ceiling = field(default_factory=Ceiling)
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES

    def score(self, records: Sequence[Record]) -> Batch:
        """The output and dead-letter messages for `records`, in their order within each partition. Raises
        CeilingExceededError when the incumbent dead-letters more than the ceiling: nothing of the batch may be
        committed then."""
        batch = Batch()
        readable: list[Record] = []
        rows: list[dict[str, Any]] = []
        for record in records:
            row, problem = self._decode(record)
            if row is None:
                batch.messages.append(self._dead_letter(record, problem, None))
            else:
                readable.append(record)
                rows.append(row)
        routing = self.routing
        if routing.shadow and routing.challenger is not None and readable:
            self._shadow(routing.challenger, readable, rows)
        answers, left = self._by_challenger(readable, rows)
        answers.update(self._by_incumbent(left, readable, rows))
        batch.messages.extend(answers[index] for index in sorted(answers))
        for message in batch.messages:
            if message.topic == self.topics.dead_letter:
                batch.dead_lettered += 1
            else:
                version = dict(message.headers)[VERSION_HEADER].decode()
                batch.answered[version] = batch.answered.get(version, 0) + 1
        return batch

    def _by_challenger(self, records: list[Record], rows: list[dict[str, Any]]) -> tuple[dict[int, Message], list[int]]:
        """The challenger's answers to the records in its share (by position), and the positions the incumbent
        answers: the rest, and those the challenger could not score. A challenger over the dead-letter ceiling takes
        no share until it is replaced."""
        routing, everyone = self.routing, list(range(len(records)))
        challenger = routing.challenger
        if challenger is None or not routing.challenger_percent or self.ceiling.exceeded(challenger.name) is not None:
            return {}, everyone
        threshold = routing.challenger_percent * BUCKETS // 100
        taken = [index for index in everyone if records[index].bucket < threshold]
        outcomes = self._answer(challenger, [records[i] for i in taken], [rows[i] for i in taken])
        self.ceiling.add(challenger.name, [failed for _, _, failed in outcomes])
        answered = {taken[index]: message for index, message, failed in outcomes if not failed}
        return answered, [index for index in everyone if index not in answered]

    def _by_incumbent(
        self, positions: list[int], records: list[Record], rows: list[dict[str, Any]]
    ) -> dict[int, Message]:
        incumbent = self.routing.incumbent
        outcomes = self._answer(incumbent, [records[i] for i in positions], [rows[i] for i in positions])
        self.ceiling.add(incumbent.name, [failed for _, _, failed in outcomes])
        share = self.ceiling.exceeded(incumbent.name)
        if share is not None:
            raise CeilingExceededError(
                f"{incumbent.name} dead-lettered {share:.0%} of its last records, more than the ceiling of "
                f"{self.ceiling.share:.0%}: no more records are taken until it is replaced"
            )
        return {positions[index]: message for index, message, _ in outcomes}

    def _decode(self, record: Record) -> tuple[dict[str, Any] | None, str]:
        """The record's row, or None and why it cannot be one."""
        value = record.value
        if value is None:
            return None, "the record has no value (a tombstone): expected a JSON object of features"
        if len(value) > self.max_record_bytes:
            return None, f"the record is {len(value)} bytes, more than the {self.max_record_bytes} accepted"
        try:
            row = json.loads(value)
        except (UnicodeDecodeError, ValueError) as error:
            return None, f"the record is not JSON ({error})"
        if not isinstance(row, dict):
            return None, f"expected a JSON object of features, not {type(row).__name__}"
        return row, ""

    def _answer(
        self, version: Version, records: list[Record], rows: list[dict[str, Any]]
    ) -> list[tuple[int, Message, bool]]:
        """(position, message, dead-lettered) for each of `records`, scored by `version`: an answer for the output,
        or a dead letter with the reason."""
        if not records:
            return []
        scored, failure = self._scored(version, records, rows)
        if scored is None:
            version.count(FAILED, len(records))
            return [(i, self._dead_letter(record, failure, version.name), True) for i, record in enumerate(records)]
        checked = scored.checked
        found: list[tuple[int, Message, bool]] = []
        for position, violations in checked.rejected.items():
            reason = "; ".join(str(violation).removeprefix(f"row {position}, ") for violation in violations)
            found.append((position, self._dead_letter(records[position], f"invalid: {reason}", version.name), True))
        answers = _answers(version, records, checked.accepted.tolist(), scored)
        headers = [(VERSION_HEADER, version.name.encode())]
        for position, answer in answers:
            found.append((position, Message(self.topics.output, records[position].key, answer, headers), False))
        version.count(SCORED, len(checked.accepted))
        version.count(REJECTED, len(checked.rejected))
        found.sort(key=lambda item: item[0])
        return found

    def _shadow(self, challenger: Version, records: list[Record], rows: list[dict[str, Any]]) -> None:
        """The challenger scores every record, for its metrics and the prediction log only."""
        scored, _ = self._scored(challenger, records, rows)
        if scored is None:
            challenger.count(FAILED, len(records))
            return
        challenger.count(SCORED, len(scored.checked.accepted))
        challenger.count(REJECTED, len(scored.checked.rejected))

    @staticmethod
    def _scored(version: Version, records: list[Record], rows: list[dict[str, Any]]) -> tuple[Scored | None, str]:
        started = time.perf_counter()
        scorer = version.scorer
        checked = scorer.validator.check_records(rows)
        ids = [record.request_id for record in records]
        try:
            return scorer.score(checked, request_id=ids[0], row_ids=ids, started=started), ""
        except Exception as error:  # a pipeline that fails is the version's failure, told with the record
            return None, f"{version.name} failed to score ({type(error).__name__}: {error})"

    def _dead_letter(self, record: Record, reason: str, version: str | None) -> Message:
        """The record as it came, with why it was not scored, where it came from and who refused it."""
        headers = [
            (ERROR_HEADER, reason[:1024].encode()),
            (SOURCE_HEADER, record.source.encode()),
            (REQUEST_ID_HEADER, record.request_id.encode()),
        ]
        if version is not None:
            headers.append((VERSION_HEADER, version.encode()))
        return Message(self.topics.dead_letter, record.key, record.value, headers)


def _answers(version: Version, records: list[Record], accepted: list[int], scored: Scored) -> list[tuple[int, bytes]]:
    """(position, answer) for each accepted record: `{"requestId", "version", "prediction", "probabilities"}` as
    JSON, the parts every answer of the batch shares encoded once."""
    dumps = json.dumps
    head = '"version":' + dumps(version.name) + ',"prediction":'
    predictions = [dumps(_plain(value), allow_nan=False) for value in scored.predictions.tolist()]
    classes, probabilities = version.scorer.classes, scored.probabilities
    tails = ["}"] * len(predictions)
    if probabilities is not None and classes is not None:
        names = [dumps(str(label)) + ":" for label in classes]
        tails = [
            ',"probabilities":{' + ",".join(name + repr(p) for name, p in zip(names, row, strict=True)) + "}}"
            for row in probabilities.tolist()
        ]
    return [
        (position, ('{"requestId":' + dumps(records[position].request_id) + "," + head + prediction + tail).encode())
        for position, prediction, tail in zip(accepted, predictions, tails, strict=True)
    ]


def _plain(value: Any) -> Any:
    """A prediction as JSON holds it: numpy scalars as Python numbers, NaN as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
