"""The sensor inference consumer: consume a batch, decode, score, produce, then commit.

Delivery (at-least-once): a batch's input offsets are committed only after every result and
every dead letter of that batch is acknowledged by the broker. A crash before the commit
replays the batch, so a result may repeat but is never lost. Batches are processed whole
inside the poll loop, so a partition revoked by a rebalance (the callbacks run inside
consume()) never has a half-done batch: what was taken was either committed already or is
left uncommitted for the next owner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from schemas import codec
from schemas import deadletter as dl
from schemas import headers as h
from schemas.avro import encode_record
from schemas.contracts import SENSOR_CHANNELS, SENSOR_SAMPLES
from schemas.messages import MODALITY_SENSOR
from schemas.sensor_batch import SensorBatch, decode_sensor_batch
from services.core.scoring import commit_offsets, rewind_offsets, top1
from services.inference.model import LoadedModel
from services.runtime.kafka import (
    DeliveryTracker,
    consumer_config,
    flush_or_raise,
    position,
    producer,
)
from services.runtime.metrics import Health, InferenceMetrics
from services.runtime.settings import InferenceSettings

log = logging.getLogger(__name__)

AVRO_HEADERS: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]
RETRY_BACKOFF_S = 1.0


@dataclass(frozen=True)
class BatchStats:
    consumed: int
    scored: int
    dead_lettered: int
    model_version: int
    inference_s: float


class SensorInferenceConsumer:
    """Scores sensor.windows with one loaded model; results to inference.results."""

    def __init__(
        self,
        settings: InferenceSettings,
        model: LoadedModel,
        metrics: InferenceMetrics,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.metrics = metrics
        self.health = health
        topics = settings.kafka.topics
        self.source = topics.sensor_windows
        self.results_topic = topics.inference_results
        self.dlq_topic = topics.dlq(self.source[len(settings.kafka.topic_prefix) :])
        self.assigned: set[tuple[str, int]] = set()
        self._producer = producer(settings.kafka)
        self._tracker = DeliveryTracker()

    def _on_assign(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in parts)
        log.info("assigned %s", sorted(p.partition for p in parts))

    def _on_revoke(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        self.assigned.difference_update((p.topic, p.partition) for p in parts)
        log.info("revoked %s", sorted(p.partition for p in parts))

    def run(
        self,
        stop: Callable[[], bool],
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        """Consume until stop() is true, then finish the batch in hand and leave the group."""
        consumer = Consumer(consumer_config(self.settings.kafka, self.settings.effective_group_id))
        consumer.subscribe(
            [self.source],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        timeout = self.settings.max_wait_ms / 1000.0
        try:
            while not stop():
                if self.health is not None:
                    self.health.tick()
                msgs = consumer.consume(num_messages=self.settings.max_batch, timeout=timeout)
                if not msgs:
                    continue
                try:
                    stats = self.process(consumer, msgs)
                except KafkaException as exc:
                    # Results or dead letters were not all acknowledged: commit nothing, rewind
                    # to the batch's first offsets and try again (at-least-once).
                    log.warning("batch delivery failed, rewinding to retry: %s", exc)
                    self.metrics.batch_failures.labels("deliver").inc()
                    self._rewind(consumer, msgs)
                    time.sleep(RETRY_BACKOFF_S)
                    continue
                if on_batch is not None:
                    on_batch(stats)
        finally:
            consumer.close()
            self._producer.flush(10)

    def _rewind(self, consumer: Consumer, msgs: list[Message]) -> None:
        consumed = [position(m) for m in msgs if m.error() is None]
        for (topic, partition), offset in rewind_offsets(consumed).items():
            if (topic, partition) in self.assigned:
                consumer.seek(TopicPartition(topic, partition, offset))

    def process(self, consumer: Consumer, msgs: list[Message]) -> BatchStats:
        """Score one batch, dead-letter its bad records, deliver everything, then commit."""
        good: list[Message] = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            else:
                log.warning("consumer error: %s", err)
        if not good:
            return BatchStats(len(msgs), 0, 0, self.model.version.version, 0.0)
        self.metrics.consumed.labels(self.source).inc(len(good))
        batch = decode_sensor_batch(
            [m.value() for m in good],
            [codec.content_type_of(m.headers()) for m in good],
            channels=len(SENSOR_CHANNELS),
            n_samples=SENSOR_SAMPLES,
            max_value_bytes=self.settings.max_value_bytes,
        )
        model = self.model  # one reference for the whole batch: a swap lands between batches
        inference_s = 0.0
        failures = list(batch.failures)
        self._tracker.reset()
        if len(batch):
            t0 = time.perf_counter()
            try:
                probs = model.predict(batch.samples)
            except Exception as exc:  # a model that cannot score a valid batch
                log.exception("scoring failed for %d events", len(batch))
                failures += [
                    (p, dl.CodecError(dl.SCORING_FAILED, str(exc))) for p in batch.positions
                ]
                probs = None
            inference_s = time.perf_counter() - t0
            if probs is not None:
                self._produce_results(batch, probs, model)
                self.metrics.inference_seconds.labels(MODALITY_SENSOR).observe(inference_s)
                self.metrics.batch_size.labels(MODALITY_SENSOR).observe(len(batch))
        for pos, error in failures:
            self._dead_letter(good[pos], error)
        flush_or_raise(self._producer, self._tracker)
        offsets = commit_offsets(position(m) for m in good)
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
        )
        scored = len(good) - len(failures)
        return BatchStats(len(good), scored, len(failures), model.version.version, inference_s)

    def _produce_results(
        self, batch: SensorBatch, probs: npt.NDArray[np.float32], model: LoadedModel
    ) -> None:
        mv = model.version
        classes = mv.classes
        index, confidence = top1(probs)
        now_ms = int(time.time() * 1000)
        record: dict[str, Any] = {
            "schema_version": 1,
            "modality": MODALITY_SENSOR,
            "model_name": mv.name,
            "model_version": mv.version,
            "classes": classes,
            "scored_time_ms": now_ms,
        }
        rows = probs.astype("<f4", copy=False)
        produce = self._producer.produce
        event_times = batch.event_time_ms.tolist()
        # One Avro record per event is the contract; everything else here is per batch.
        for i, (event_id, asset_id, cls, conf) in enumerate(
            zip(batch.event_ids, batch.asset_ids, index.tolist(), confidence.tolist(), strict=True)
        ):
            record["event_id"] = event_id
            record["asset_id"] = asset_id
            record["event_time_ms"] = event_times[i]
            record["probabilities"] = rows[i].tobytes()
            record["predicted_class"] = classes[cls]
            record["confidence"] = conf
            produce(
                self.results_topic,
                key=asset_id,
                value=encode_record("InferenceResult", record),
                headers=AVRO_HEADERS,
                on_delivery=self._tracker,
            )
        m = self.metrics
        m.produced.labels(self.results_topic).inc(len(batch))
        m.model_version.labels(mv.name).set(mv.version)
        counts = np.bincount(index, minlength=len(classes))
        for c in np.flatnonzero(counts).tolist():
            m.predictions.labels(mv.name, classes[c]).inc(int(counts[c]))
        m.confidence.observe_many((mv.name, str(mv.version)), confidence)
        m.end_to_end.observe_many(
            (MODALITY_SENSOR,), (now_ms - batch.event_time_ms).clip(0) / 1000.0
        )

    def _dead_letter(self, msg: Message, error: dl.CodecError) -> None:
        topic, partition, offset = position(msg)
        letter = dl.dead_letter(
            topic=topic,
            partition=partition,
            offset=offset,
            error=error,
            service=self.settings.service_name,
            key=msg.key(),
            value=msg.value(),
        )
        self._producer.produce(
            self.dlq_topic,
            key=msg.key(),
            value=msg.value(),
            headers=dl.to_headers(letter, msg.headers()),
            on_delivery=self._tracker,
        )
        self.metrics.dead_letters.labels(topic, error.error_class).inc()
        log.info(
            "dead-lettered %s[%d]@%d: %s: %s",
            topic,
            partition,
            offset,
            error.error_class,
            error.message,
        )
