"""Kafka client construction and topic administration, over confluent-kafka (librdkafka)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from driftline.schemas.topics import Topics, TopicSpec, all_specs
from driftline.services.runtime.settings import KafkaSettings

log = logging.getLogger(__name__)


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


def spans(msgs: Iterable[Message]) -> dict[tuple[str, int], tuple[int, int]]:
    """Per (topic, partition) of a batch of consumed records: its first offset (where to seek
    to read the batch again) and one past its last (what to commit once it is done), in one
    pass over the records."""
    out: dict[tuple[str, int], tuple[int, int]] = {}
    for msg in msgs:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            raise ValueError("record has no topic, partition or offset")
        key = (topic, partition)
        span = out.get(key)
        if span is None:
            out[key] = (offset, offset + 1)
        elif not span[0] <= offset < span[1]:
            out[key] = (min(span[0], offset), max(span[1], offset + 1))
    return out


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
    that would move keys between partitions). Replication follows `replication_plan`.
    """
    topics = Topics(kafka.topic_prefix)
    wanted = list(specs if specs is not None else all_specs(label_retention_ms))
    client = admin(kafka)
    # Fail in seconds, with the address, when no broker answers.
    brokers = len(client.list_topics(timeout=min(timeout_s, 10.0)).brokers)
    replicas, min_isr = replication_plan(kafka, brokers)
    new = [
        NewTopic(
            topics.name(spec.base),
            num_partitions=partitions or spec.partitions,
            replication_factor=replicas,
            config={**spec.config(), "min.insync.replicas": str(min_isr)},
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


def replication_plan(kafka: KafkaSettings, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for new topics on a cluster of `brokers`.

    By default 3 replicas and min ISR 2 on three brokers or more: acks=all producers then
    survive one broker down without losing an acknowledged record. One broker gives 1 and 1:
    nothing survives that broker's disk. Explicit settings are checked against the cluster.
    """
    replicas = kafka.replication_factor or (3 if brokers >= 3 else 1)
    if replicas > brokers:
        raise ValueError(
            f"replication factor {replicas} needs at least {replicas} brokers; the cluster "
            f"has {brokers}"
        )
    min_isr = kafka.min_insync_replicas or (2 if replicas >= 3 else 1)
    if min_isr > replicas:
        raise ValueError(
            f"min.insync.replicas {min_isr} is more than the {replicas} replicas: no write "
            "could ever be acknowledged"
        )
    return replicas, min_isr


class DeliveryTracker:
    """Counts delivery reports so a batch is committed only after every record is acknowledged."""

    def __init__(self) -> None:
        self.delivered = 0
        self.errors: list[str] = []
        self.fatal: KafkaError | None = None

    def __call__(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.errors.append(str(err))
            if err.fatal():
                self.fatal = err

    def reset(self) -> None:
        self.delivered = 0
        self.errors.clear()
        self.fatal = None


class RenewableProducer:
    """A long-lived producer that is replaced once librdkafka declares it fatal.

    An idempotent producer that goes fatal (a fenced epoch, a sequence the broker refuses, a
    producer id refused before a principal's ACLs arrived) never produces again, so a service
    that kept it would fail every batch from then on. Services hold this instead and call
    `renew_if_fatal` when a batch failed: the dead producer's queue is purged (those records
    belong to the failed batch, which is read again from its offsets) and a fresh one takes
    its place.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        factory: Callable[..., Producer] | None = None,
        **overrides: Any,
    ) -> None:
        self._kafka = kafka
        self._factory = factory or producer
        self._overrides = overrides
        self.fatal: KafkaError | None = None
        self.renewals = 0
        self.producer: Producer = self._new()

    def _new(self) -> Producer:
        return self._factory(self._kafka, error_cb=self._on_error, **self._overrides)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err

    def note(self, err: KafkaError | None) -> None:
        """A delivery report's error: a fatal one marks the producer for renewal."""
        if err is not None and err.fatal():
            self.fatal = err

    def renew_if_fatal(self, exc: BaseException | None = None) -> bool:
        """Replace the producer if it (or the exception a batch failed with) is fatal."""
        err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        if isinstance(err, KafkaError) and (err.fatal() or err.code() == KafkaError._FATAL):
            self.fatal = self.fatal or err
        if self.fatal is None:
            with contextlib.suppress(KafkaException, RuntimeError):
                self.producer.poll(0)  # serves error_cb: a fatal error may be waiting there
        if self.fatal is None:
            return False
        log.error("producer went fatal (%s); replacing it with a new one", self.fatal)
        with contextlib.suppress(KafkaException, RuntimeError):
            self.producer.purge(in_queue=True, in_flight=True)
        self.fatal = None
        self.renewals += 1
        self.producer = self._new()
        return True


def flush_or_raise(prod: Producer, tracker: DeliveryTracker, timeout_s: float = 30.0) -> None:
    """Wait for every queued record; raise if any failed or some are still in flight."""
    remaining = prod.flush(timeout_s)
    if remaining:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{remaining} records undelivered"))
    if tracker.errors:
        raise KafkaException(KafkaError(KafkaError._FAIL, "; ".join(tracker.errors[:3])))


# (key, value, headers) of one record
Record = tuple[str | bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]


class FatalProducerError(KafkaException):
    """A producer went fatal (librdkafka's term) on every attempt; the last cause is named."""


def send_all(
    kafka: KafkaSettings,
    topic: str,
    records: Sequence[Record],
    *,
    attempts: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 30.0,
) -> None:
    """Write `records` in order, each acknowledged by every in-sync replica, or raise.

    For the few records a command or the trainer writes now and then (the registry). An
    idempotent producer that goes fatal can never produce again: librdkafka makes it so when
    the broker refuses it a producer id, as a broker does for a principal whose ACLs it has not
    yet applied (seen on a freshly started secured broker) or lacks. Each attempt therefore
    takes a fresh producer; a fatal error is retried with backoff and its cause logged, any
    other error raises at once. Writing the same records again is harmless for the registry:
    readers fold records by key.
    """
    fatal: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:
        if err.fatal():
            fatal.append(err)

    for attempt in range(1, attempts + 1):
        fatal.clear()
        prod = producer(kafka, error_cb=on_error)
        tracker = DeliveryTracker()
        try:
            for key, value, headers in records:
                prod.produce(topic, key=key, value=value, headers=headers, on_delivery=tracker)
            flush_or_raise(prod, tracker, timeout_s)
            return
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            went_fatal = bool(fatal) or (
                isinstance(err, KafkaError) and (err.fatal() or err.code() == KafkaError._FATAL)
            )
            if not went_fatal:
                raise
            with contextlib.suppress(KafkaException):
                prod.poll(0)  # serves error_cb, which names the cause
            cause = str(fatal[-1]) if fatal else str(err)
            if attempt == attempts:
                raise FatalProducerError(
                    KafkaError(
                        KafkaError._FATAL,
                        f"writing {topic}: the producer went fatal {attempts} times; last: "
                        f"{cause} (does this principal have Write on {topic}?)",
                        fatal=True,
                    )
                ) from exc
            log.warning(
                "writing %s: producer went fatal (%s); retrying with a new producer (%d/%d)",
                topic,
                cause,
                attempt,
                attempts - 1,
            )
            time.sleep(backoff_s * 2 ** (attempt - 1))
