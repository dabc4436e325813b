"""Kafka client construction and topic administration, over confluent-kafka (librdkafka)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from schemas.topics import Topics, TopicSpec, all_specs
from services.runtime.settings import KafkaSettings


def producer(kafka: KafkaSettings, **overrides: Any) -> Producer:
    """An idempotent producer: retries never duplicate or reorder within a partition."""
    conf = kafka.client_config(
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": 10 * 1024 * 1024,
            **overrides,
        }
    )
    return Producer(conf)


def consumer_config(kafka: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Consumer config: manual commits, cooperative-sticky, start from the earliest offset."""
    return kafka.client_config(
        **{
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "isolation.level": "read_committed",
            **overrides,
        }
    )


def position(msg: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed record."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("record has no topic, partition or offset")
    return topic, partition, offset


def admin(kafka: KafkaSettings) -> AdminClient:
    return AdminClient(kafka.client_config())


def create_topics(
    kafka: KafkaSettings,
    specs: Iterable[TopicSpec] | None = None,
    *,
    partitions: int | None = None,
    timeout_s: float = 30.0,
    label_retention_ms: int | None = None,
) -> tuple[list[str], list[str]]:
    """Create every topic of the table that is missing; returns (created, already there).

    Idempotent: an existing topic is left as it is (its partitions are never changed, since
    that would move keys between partitions).
    """
    topics = Topics(kafka.topic_prefix)
    wanted = list(specs if specs is not None else all_specs(label_retention_ms))
    client = admin(kafka)
    # Fail in seconds, with the address, when no broker answers.
    client.list_topics(timeout=min(timeout_s, 10.0))
    new = [
        NewTopic(
            topics.name(spec.base),
            num_partitions=partitions or spec.partitions,
            replication_factor=-1,
            config=spec.config(),
        )
        for spec in wanted
    ]
    created: list[str] = []
    existing: list[str] = []
    for name, future in client.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                existing.append(name)
            else:
                raise
    return created, existing


class DeliveryTracker:
    """Counts delivery reports so a batch is committed only after every record is acknowledged."""

    def __init__(self) -> None:
        self.delivered = 0
        self.errors: list[str] = []

    def __call__(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.errors.append(str(err))

    def reset(self) -> None:
        self.delivered = 0
        self.errors.clear()


def flush_or_raise(prod: Producer, tracker: DeliveryTracker, timeout_s: float = 30.0) -> None:
    """Wait for every queued record; raise if any failed or some are still in flight."""
    remaining = prod.flush(timeout_s)
    if remaining:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{remaining} records undelivered"))
    if tracker.errors:
        raise KafkaException(KafkaError(KafkaError._FAIL, "; ".join(tracker.errors[:3])))
