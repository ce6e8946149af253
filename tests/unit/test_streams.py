"""A stream's batches scored without Kafka: who answers each record, what reaches the output topic, what is
dead-lettered and why, and what the shadow and the ceiling do."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from steward_predictor import scoring
from steward_predictor.metrics import Families, ModelMetrics
from steward_predictor.streams import (
    BUCKETS,
    ERROR_HEADER,
    VERSION_HEADER,
    Ceiling,
    CeilingExceededError,
    Record,
    Routing,
    Stream,
    Topics,
    Version,
)
from tests.support import models

TOPICS = Topics(output="scores", dead_letter="scores.dead")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("stream-bundles")
    return {version: models.breast_cancer(directory, version=version).path for version in ("v1", "v2")}


@pytest.fixture(scope="module")
def rows(trained: dict[str, models.Trained]) -> list[dict[str, Any]]:
    return models.records(trained["breast-cancer"].x_test)


def _version(path: Path, variant: str) -> Version:
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    scorer = scoring.load(str(path))
    return Version(scorer, ModelMetrics(Families(CollectorRegistry()), "fraud", scorer.bundle.version, variant))


def _records(rows: list[dict[str, Any]], count: int, partition: int = 0) -> list[Record]:
    return [
        Record("payments", partition, offset, f"key-{offset}".encode(), json.dumps(rows[offset % len(rows)]).encode())
        for offset in range(count)
    ]


def _answers(batch_messages: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(message.value) for message in batch_messages if message.topic == TOPICS.output]


def _requests(version: Version, code: int) -> float:
    assert version.metrics is not None
    counter = version.metrics.families.requests.labels(**version.metrics.base, protocol="kafka", code=str(code))
    return float(counter._value.get())


def test_every_record_is_answered_once_in_order_under_its_key(bundles: dict[str, Path], rows: list[Any]) -> None:
    incumbent = _version(bundles["v1"], "incumbent")
    stream = Stream(Routing(incumbent), TOPICS)
    records = _records(rows, 40)
    batch = stream.score(records)
    assert [message.key for message in batch.messages] == [record.key for record in records]
    answers = _answers(batch.messages)
    assert [answer["requestId"] for answer in answers] == [f"key-{offset}" for offset in range(40)]
    assert {answer["version"] for answer in answers} == {"v1"}
    assert all(math.isclose(sum(answer["probabilities"].values()), 1.0) for answer in answers)
    assert batch.answered == {"v1": 40}
    assert _requests(incumbent, 200) == 40


def test_a_record_without_a_usable_key_is_known_by_its_place(bundles: dict[str, Path], rows: list[Any]) -> None:
    stream = Stream(Routing(_version(bundles["v1"], "incumbent")), TOPICS)
    keyless = Record("payments", 3, 17, None, json.dumps(rows[0]).encode())
    spaced = Record("payments", 3, 18, b"has spaces", json.dumps(rows[0]).encode())
    answers = _answers(stream.score([keyless, spaced]).messages)
    assert [answer["requestId"] for answer in answers] == ["payments-3-17", "payments-3-18"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "no value"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not list"),
        (b'"text"', "not str"),
        (b"\xff\xfe", "not JSON"),
        (b"x" * 2000, "more than the 1000 accepted"),
    ],
)
def test_what_is_not_a_record_is_dead_lettered_as_it_came_with_why(
    bundles: dict[str, Path], rows: list[Any], value: bytes | None, reason: str
) -> None:
    stream = Stream(Routing(_version(bundles["v1"], "incumbent")), TOPICS, max_record_bytes=1000)
    poison = Record("payments", 0, 7, b"k7", value)
    batch = stream.score([*_records(rows, 3), poison])
    (dead,) = [message for message in batch.messages if message.topic == TOPICS.dead_letter]
    headers = dict(dead.headers)
    assert (dead.key, dead.value) == (b"k7", value)
    assert reason in headers[ERROR_HEADER].decode()
    assert headers["x-steward-source"] == b"payments/0/7"
    assert (batch.dead_lettered, batch.answered) == (1, {"v1": 3})


def test_a_record_the_schema_refuses_is_dead_lettered_with_the_schemas_words(
    bundles: dict[str, Path], rows: list[Any]
) -> None:
    incumbent = _version(bundles["v1"], "incumbent")
    stream = Stream(Routing(incumbent), TOPICS)
    bad = dict(rows[0])
    bad[next(iter(bad))] = "not a number"
    batch = stream.score([Record("payments", 0, 0, b"bad", json.dumps(bad).encode()), *_records(rows, 2)[1:]])
    dead = [message for message in batch.messages if message.topic == TOPICS.dead_letter]
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers[ERROR_HEADER].decode().startswith("invalid: field")
    assert headers[VERSION_HEADER] == b"v1"
    assert (_requests(incumbent, 422), _requests(incumbent, 200)) == (1, 1)


@pytest.mark.parametrize("percent", [0, 5, 50, 100])
def test_the_challenger_answers_its_share_by_key_and_the_same_keys_every_time(
    bundles: dict[str, Path], rows: list[Any], percent: int
) -> None:
    routing = Routing(_version(bundles["v1"], "incumbent"), _version(bundles["v2"], "challenger"), percent)
    stream = Stream(routing, TOPICS)
    records = _records(rows, 2000)
    first = {answer["requestId"]: answer["version"] for answer in _answers(stream.score(records).messages)}
    again = {answer["requestId"]: answer["version"] for answer in _answers(stream.score(records).messages)}
    assert first == again
    taken = sum(version == "v2" for version in first.values())
    # Within 4 standard deviations of a binomial draw with the challenger's share.
    expected, spread = 2000 * percent / 100, math.sqrt(2000 * percent / 100 * (1 - percent / 100))
    assert abs(taken - expected) <= 4 * spread


def test_a_shadow_scores_every_record_and_never_writes_an_answer(bundles: dict[str, Path], rows: list[Any]) -> None:
    incumbent, shadow = _version(bundles["v1"], "incumbent"), _version(bundles["v2"], "shadow")
    stream = Stream(Routing(incumbent, shadow, shadow=True), TOPICS)
    batch = stream.score(_records(rows, 50))
    assert {answer["version"] for answer in _answers(batch.messages)} == {"v1"}
    assert len(batch.messages) == 50
    assert (_requests(shadow, 200), _requests(incumbent, 200)) == (50, 50)


def test_the_shadow_is_told_each_records_own_id(bundles: dict[str, Path], rows: list[Any]) -> None:
    seen: list[Any] = []
    incumbent, shadow = _version(bundles["v1"], "incumbent"), _version(bundles["v2"], "shadow")

    class Seen:
        def observe(self, observation: scoring.Observation) -> None:
            seen.append((observation.version, list(observation.row_ids or [])))

    incumbent.scorer.observers.append(Seen())
    shadow.scorer.observers.append(Seen())
    Stream(Routing(incumbent, shadow, shadow=True), TOPICS).score(_records(rows, 5))
    ids = [f"key-{offset}" for offset in range(5)]
    assert sorted(seen) == [("v1", ids), ("v2", ids)]


def test_the_incumbent_answers_what_a_failing_challenger_cannot(bundles: dict[str, Path], rows: list[Any]) -> None:
    class Broken(scoring.Scorer):
        def score(self, *args: Any, **kwargs: Any) -> scoring.Scored:
            raise RuntimeError("log of zero")

    working = _version(bundles["v2"], "challenger")
    challenger = Version(Broken(working.scorer.bundle), working.metrics)
    incumbent = _version(bundles["v1"], "incumbent")
    stream = Stream(Routing(incumbent, challenger, 50), TOPICS, Ceiling(0.5, window=100, least=10))
    first = stream.score(_records(rows, 100))
    assert first.answered == {"v1": 100}
    assert first.dead_lettered == 0
    failed = _requests(challenger, 500)
    assert 30 <= failed <= 70
    # Over its ceiling now: it takes no share at all until it is replaced.
    stream.score(_records(rows, 100))
    assert _requests(challenger, 500) == failed


def test_an_incumbent_over_the_ceiling_halts_the_batch(bundles: dict[str, Path], rows: list[Any]) -> None:
    stream = Stream(Routing(_version(bundles["v1"], "incumbent")), TOPICS, Ceiling(0.2, window=100, least=20))
    poison = [Record("payments", 0, offset, None, b"{}") for offset in range(10)]
    stream.score([*_records(rows, 90), *poison])  # 10 % of what it saw, and {} is refused by the schema.
    with pytest.raises(CeilingExceededError, match="more than the ceiling of 20%"):
        stream.score([Record("payments", 0, 100 + offset, None, b"{}") for offset in range(30)])


def test_a_share_needs_a_challenger_and_stays_within_bounds(bundles: dict[str, Path]) -> None:
    incumbent = _version(bundles["v1"], "incumbent")
    with pytest.raises(ValueError, match="needs a challenger"):
        Routing(incumbent, None, 10)
    with pytest.raises(ValueError, match="0 to 100"):
        Routing(incumbent, incumbent, 101)
    assert BUCKETS % 100 == 0
