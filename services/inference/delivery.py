"""How a batch's outputs and input offsets reach Kafka: at-least-once or exactly-once.

At-least-once: results and dead letters are produced, the producer is flushed and every
delivery report checked, and only then are the input offsets committed. A crash in between
replays the batch (duplicates possible, loss impossible).

Exactly-once: each batch is one Kafka transaction holding its results, its dead letters and
its input offsets (send_offsets_to_transaction with the consumer's group metadata). Readers
with isolation.level=read_committed see each batch whole or not at all, never twice.
The transactional id is stable per instance, so a restarted instance fences its previous
incarnation and aborts its open transaction immediately instead of after the timeout.
"""

from __future__ import annotations

import logging
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from schemas import headers as h
from services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from services.runtime.settings import InferenceSettings

log = logging.getLogger(__name__)

COMMIT_RETRIES = 5


class RewindBatch(Exception):
    """The batch was not committed: seek back to its first offsets and process it again."""


class Delivery(Protocol):
    def begin(self) -> None: ...
    def produce(
        self, topic: str, key: bytes | str | None, value: bytes | None, headers: h.HeaderList
    ) -> None: ...
    def commit(self, offsets: list[TopicPartition]) -> None: ...
    def abandon(self) -> None: ...
    def close(self) -> None: ...


class AtLeastOnce:
    """Produce, flush, check every delivery report, then commit the input offsets."""

    def __init__(self, settings: InferenceSettings, consumer: Consumer) -> None:
        self.consumer = consumer
        self.producer: Producer = producer(settings.kafka)
        self.tracker = DeliveryTracker()

    def begin(self) -> None:
        self.tracker.reset()

    def produce(
        self, topic: str, key: bytes | str | None, value: bytes | None, headers: h.HeaderList
    ) -> None:
        self.producer.produce(
            topic, key=key, value=value, headers=headers, on_delivery=self.tracker
        )

    def commit(self, offsets: list[TopicPartition]) -> None:
        try:
            flush_or_raise(self.producer, self.tracker)
        except KafkaException as exc:
            raise RewindBatch(f"results not all delivered: {exc}") from exc
        self.consumer.commit(offsets=offsets, asynchronous=False)

    def abandon(self) -> None:
        # Records already produced stay produced; the replay may duplicate them.
        self.tracker.reset()

    def close(self) -> None:
        self.producer.flush(10)


class ExactlyOnce:
    """One transaction per batch: outputs and input offsets commit together or not at all."""

    def __init__(self, settings: InferenceSettings, consumer: Consumer) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = self._new_producer()

    def _new_producer(self) -> Producer:
        prod = producer(
            self.settings.kafka,
            **{
                "transactional.id": self.settings.transactional_id,
                "transaction.timeout.ms": self.settings.transaction_timeout_ms,
            },
        )
        prod.init_transactions(self.settings.registry_timeout_s)
        return prod

    def begin(self) -> None:
        self.producer.begin_transaction()

    def produce(
        self, topic: str, key: bytes | str | None, value: bytes | None, headers: h.HeaderList
    ) -> None:
        self.producer.produce(topic, key=key, value=value, headers=headers)

    def commit(self, offsets: list[TopicPartition]) -> None:
        try:
            self.producer.send_offsets_to_transaction(
                offsets, self.consumer.consumer_group_metadata()
            )
            for attempt in range(COMMIT_RETRIES):
                try:
                    self.producer.commit_transaction()
                    return
                except KafkaException as exc:
                    err = exc.args[0]
                    if (
                        isinstance(err, KafkaError)
                        and err.retriable()
                        and attempt + 1 < COMMIT_RETRIES
                    ):
                        log.warning("retrying transaction commit: %s", err)
                        continue
                    raise
        except KafkaException as exc:
            self._recover(exc)
            raise RewindBatch(f"transaction not committed: {exc}") from exc

    def _recover(self, exc: KafkaException) -> None:
        err = exc.args[0]
        if isinstance(err, KafkaError) and err.fatal():
            # A fatal error (e.g. fenced by a newer instance): this producer is dead.
            log.error("fatal producer error, rebuilding the transactional producer: %s", err)
            self.producer = self._new_producer()
            return
        log.warning("aborting transaction: %s", err)
        try:
            self.producer.abort_transaction(self.settings.registry_timeout_s)
        except KafkaException as abort_exc:
            log.error("abort failed, rebuilding the transactional producer: %s", abort_exc)
            self.producer = self._new_producer()

    def abandon(self) -> None:
        try:
            self.producer.abort_transaction(self.settings.registry_timeout_s)
        except KafkaException as exc:
            log.warning("abort of an abandoned batch failed, rebuilding the producer: %s", exc)
            self.producer = self._new_producer()

    def close(self) -> None:
        self.producer.flush(10)


def for_settings(settings: InferenceSettings, consumer: Consumer) -> Delivery:
    return (
        ExactlyOnce(settings, consumer)
        if settings.exactly_once
        else AtLeastOnce(settings, consumer)
    )
