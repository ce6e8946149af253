"""Exactly-once on a real Kafka broker (one KRaft node from its Maven jars): transactions commit and abort for the
readers that ask for it, consumed offsets commit together with the records produced from them, and a newer producer
with the same transactional id fences the old one."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from steward_harness.kafka import Kafka

TIMEOUT = 30.0


def test_a_read_committed_consumer_sees_only_committed_records_and_a_read_uncommitted_one_the_aborted_too(
    kafka: Kafka,
) -> None:
    topic = _topic(kafka, "transactions")
    producer = _transactional(kafka)

    _in_transaction(producer, topic, [b"committed-1", b"committed-2"])
    producer.begin_transaction()
    _produce(producer, topic, [b"aborted-1", b"aborted-2"])
    # On the broker before the abort: an abort purges what the client has not sent yet.
    assert producer.flush(TIMEOUT) == 0
    producer.abort_transaction(TIMEOUT)
    _in_transaction(producer, topic, [b"committed-3"])

    assert _read(kafka, topic, "read_committed", until=b"committed-3") == [
        b"committed-1",
        b"committed-2",
        b"committed-3",
    ]
    assert _read(kafka, topic, "read_uncommitted", until=b"committed-3") == [
        b"committed-1",
        b"committed-2",
        b"aborted-1",
        b"aborted-2",
        b"committed-3",
    ]


def test_consumed_offsets_commit_in_the_same_transaction_as_the_records_produced_from_them(kafka: Kafka) -> None:
    requests, scores = _topic(kafka, "requests"), _topic(kafka, "scores")
    inputs = [f"request-{number}".encode() for number in range(10)]
    plain = Producer(kafka.client_config())
    _produce(plain, requests, inputs)
    assert plain.flush(TIMEOUT) == 0
    group = f"scorer-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(
        {
            **kafka.client_config(),
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    producer = _transactional(kafka)
    try:
        consumer.subscribe([requests])
        producer.begin_transaction()
        consumed = _consume(consumer, len(inputs))
        _produce(producer, scores, [b"scored " + value for value in consumed])
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), TIMEOUT
        )
        assert _committed_offset(kafka, group, requests) == OFFSET_INVALID, "committed before the transaction was"
        producer.commit_transaction(TIMEOUT)
    finally:
        consumer.close()

    assert _committed_offset(kafka, group, requests) == len(inputs)
    assert _read(kafka, scores, "read_committed", until=b"scored request-9") == [b"scored " + value for value in inputs]


def test_a_newer_producer_with_the_same_transactional_id_fences_the_old_one(kafka: Kafka) -> None:
    topic = _topic(kafka, "fencing")
    transactional_id = f"scorer-{uuid.uuid4().hex[:8]}"
    zombie = _transactional(kafka, transactional_id)
    zombie.begin_transaction()
    _produce(zombie, topic, [b"from the zombie"])
    assert zombie.flush(TIMEOUT) == 0

    successor = _transactional(kafka, transactional_id)
    with pytest.raises(KafkaException) as failed:
        zombie.commit_transaction(TIMEOUT)
    error: KafkaError = failed.value.args[0]
    assert error.fatal(), error
    assert error.code() in {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}, error

    _in_transaction(successor, topic, [b"from the successor"])
    assert _read(kafka, topic, "read_committed", until=b"from the successor") == [b"from the successor"]


def _topic(kafka: Kafka, purpose: str, partitions: int = 1) -> str:
    name = f"{purpose}-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(name, partitions)
    return name


def _transactional(kafka: Kafka, transactional_id: str | None = None) -> Producer:
    """A producer with transactions initialised (which fences any older producer with the same id)."""
    producer = Producer(
        {**kafka.client_config(), "transactional.id": transactional_id or f"producer-{uuid.uuid4().hex[:8]}"}
    )
    producer.init_transactions(TIMEOUT)
    return producer


def _produce(producer: Producer, topic: str, values: list[bytes]) -> None:
    def delivered(error: KafkaError | None, message: Message) -> None:
        assert error is None, f"not delivered to {topic}: {error}"

    for value in values:
        producer.produce(topic, value=value, on_delivery=delivered)


def _in_transaction(producer: Producer, topic: str, values: list[bytes]) -> None:
    producer.begin_transaction()
    _produce(producer, topic, values)
    producer.commit_transaction(TIMEOUT)


def _consume(consumer: Consumer, count: int) -> list[bytes]:
    values: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    while len(values) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None:
            values.append(_value(message))
    assert len(values) == count, f"consumed {len(values)} of {count} records in {TIMEOUT:.0f} s"
    return values


def _read(kafka: Kafka, topic: str, isolation: str, until: bytes) -> list[bytes]:
    """The values in `topic`'s first partition, from the beginning up to and including the record `until`, as a
    consumer reading at `isolation` sees them."""
    consumer = Consumer(
        {**kafka.client_config(), "group.id": f"reader-{uuid.uuid4().hex[:8]}", "isolation.level": isolation}
    )
    values: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + TIMEOUT
        while until not in values and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None:
                values.append(_value(message))
    finally:
        consumer.close()
    assert until in values, f"{until!r} not read from {topic} at {isolation} within {TIMEOUT:.0f} s; read {values}"
    return values


def _value(message: Message) -> bytes:
    assert message.error() is None, message.error()
    value = message.value()
    assert value is not None, "a record without a value"
    return value


def _committed_offset(kafka: Kafka, group: str, topic: str) -> int:
    """The offset `group` has committed in `topic`'s first partition, as the broker reports it to an admin."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])
    # Held in a name: a client dropped while its request is in flight never completes the request's future.
    admin = kafka.admin()
    listed = admin.list_consumer_group_offsets([request])[group].result(timeout=TIMEOUT)
    [partition] = listed.topic_partitions
    offset: int = partition.offset
    return offset
