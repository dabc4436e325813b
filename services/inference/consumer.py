"""The inference consumer: consume a batch, decode, score, produce, then commit.

Batches are processed whole inside the poll loop. Rebalance callbacks run inside consume(),
so a revoked partition never has a half-done batch: what was taken was committed (or its
transaction committed) before the next consume() call, or is abandoned uncommitted when the
batch fails, and the partition's next owner replays it. Which guarantee the commit gives is
the Delivery's business (see delivery.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.avro import encode_record
from driftline.schemas.batch import DecodedBatch
from driftline.services.core.batching import Batcher, BatchPolicy
from driftline.services.core.scoring import commit_offsets, rewind_offsets, score_apart, top1
from driftline.services.inference.delivery import Delivery, RewindBatch, for_settings
from driftline.services.inference.model import LoadedModel
from driftline.services.inference.watcher import ModelSlot
from driftline.services.runtime.deadletters import describe, dlq_record
from driftline.services.runtime.kafka import consumer_config, position
from driftline.services.runtime.metrics import Health, InferenceMetrics
from driftline.services.runtime.settings import InferenceSettings

log = logging.getLogger(__name__)

AVRO_HEADERS: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]
RETRY_BACKOFF_S = 0.5
COMMITTED_TIMEOUT_S = 2.0
IDLE_POLL_S = 0.1


class Decoder(Protocol):
    """Turns a batch of record values into model inputs plus failures by position."""

    def __call__(
        self, values: Sequence[bytes | None], content_types: Sequence[str | None]
    ) -> DecodedBatch: ...


@dataclass(frozen=True)
class BatchStats:
    consumed: int
    scored: int
    dead_lettered: int
    model_version: int
    inference_s: float


class InferenceConsumer:
    """Scores one modality's topic with whatever model the slot holds."""

    def __init__(
        self,
        settings: InferenceSettings,
        source_base: str,
        decoder: Decoder,
        slot: ModelSlot,
        metrics: InferenceMetrics,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.decoder = decoder
        self.slot = slot
        self.metrics = metrics
        self.health = health
        topics = settings.kafka.topics
        self.modality = settings.modality
        self.source = topics.name(source_base)
        self.results_topic = topics.inference_results
        self.dlq_topic = topics.dlq(source_base)
        self.assigned: set[tuple[str, int]] = set()
        self._lag_series: set[tuple[str, str]] = set()
        self._delivery: Delivery | None = None
        self._pending_rewind: dict[tuple[str, int], int] | None = None
        self._from_committed = False
        self._batcher: Batcher[Message] = Batcher(
            BatchPolicy(settings.batch_size, settings.batch_wait_s)
        )

    def _on_assign(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in parts)
        log.info("assigned partitions %s", sorted(p.partition for p in parts))

    def _on_revoke(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        self.assigned.difference_update((p.topic, p.partition) for p in parts)
        # Events taken from a revoked partition but not yet scored are dropped uncommitted;
        # its next owner reads them again from the last committed offset.
        revoked = {(p.topic, p.partition) for p in parts}
        dropped = self._batcher.discard(lambda m: (m.topic(), m.partition()) in revoked)
        if dropped:
            log.info("dropped %d unscored events of revoked partitions", dropped)
        # Scored batches still waiting for their acks are finished and committed now, while
        # the partitions are still ours; if that fails they are replayed by their next owner
        # (and, for partitions we keep, by us after a rewind).
        if self._delivery is not None:
            try:
                self._delivery.drain()
            except RewindBatch as exc:
                log.warning("in-flight batches not committed at revocation: %s", exc)
                self._pending_rewind = exc.rewind
        for p in parts:
            series = (p.topic, str(p.partition))
            if series in self._lag_series:
                self.metrics.consumer_lag.remove(*series)
                self._lag_series.discard(series)
        log.info("revoked partitions %s", sorted(p.partition for p in parts))

    def _on_stats(self, stats_json: str) -> None:
        stats = json.loads(stats_json)
        for topic, tstats in stats.get("topics", {}).items():
            for pid, pstats in tstats.get("partitions", {}).items():
                lag = pstats.get("consumer_lag", -1)
                if pid == "-1" or lag is None or lag < 0:
                    continue
                self.metrics.consumer_lag.labels(topic, pid).set(lag)
                self._lag_series.add((topic, pid))

    def run(
        self, stop: Callable[[], bool], on_batch: Callable[[BatchStats], None] | None = None
    ) -> None:
        """Consume until stop() is true, finish the batch in hand, then leave the group."""
        extra: dict[str, Any] = {}
        if self.settings.statistics_interval_ms:
            extra = {
                "statistics.interval.ms": self.settings.statistics_interval_ms,
                "stats_cb": self._on_stats,
            }
        consumer = Consumer(
            consumer_config(self.settings.kafka, self.settings.effective_group_id, **extra)
        )
        delivery = self._delivery = for_settings(self.settings, consumer)
        consumer.subscribe(
            [self.source],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        batcher = self._batcher
        try:
            while not stop():
                if self.health is not None:
                    self.health.tick()
                if self._from_committed and not self._seek_committed(consumer, delivery):
                    # The coordinator is away or the group is rejoining: consume nothing but
                    # keep polling, which serves the rebalance the group may need before it
                    # answers (what is read now is read again from the committed offsets).
                    consumer.consume(num_messages=batcher.room(), timeout=RETRY_BACKOFF_S)
                    continue
                if self._pending_rewind:
                    batcher.take()
                    self._rewind(consumer, [], self._pending_rewind)
                    self._pending_rewind = None
                wait = batcher.wait_s(time.monotonic(), IDLE_POLL_S)
                batcher.add(
                    consumer.consume(num_messages=batcher.room(), timeout=wait), time.monotonic()
                )
                if not batcher.ready(time.monotonic()):
                    try:
                        delivery.idle()
                    except RewindBatch as exc:
                        self._failed(consumer, [], exc)
                    continue
                msgs = batcher.take()
                try:
                    stats = self.process(consumer, delivery, msgs)
                except (RewindBatch, KafkaException, BufferError) as exc:
                    if not isinstance(exc, RewindBatch):
                        delivery.abandon()
                    self._failed(consumer, msgs, exc)
                    continue
                if on_batch is not None:
                    on_batch(stats)
        finally:
            delivery.close()
            self._delivery = None
            consumer.close()

    def _failed(self, consumer: Consumer, msgs: list[Message], exc: Exception) -> None:
        """A batch (or batches in flight) did not commit: read them again."""
        log.warning("batch not committed, rewinding to retry it: %s", exc)
        self.metrics.batch_failures.labels("deliver").inc()
        if isinstance(exc, RewindBatch) and exc.from_committed:
            # Whether it committed is not known: the group's committed offsets will say.
            self._batcher.take()
            self._from_committed = True
        else:
            rewind = exc.rewind if isinstance(exc, RewindBatch) else None
            self._rewind(consumer, msgs, rewind)
        time.sleep(RETRY_BACKOFF_S)

    def _seek_committed(self, consumer: Consumer, delivery: Delivery) -> bool:
        """Seek every assigned partition to the group's committed offset; False if unknown."""
        parts = [TopicPartition(t, p) for t, p in sorted(self.assigned)]
        try:
            delivery.recover()
            committed = consumer.committed(parts, timeout=COMMITTED_TIMEOUT_S) if parts else []
        except KafkaException as exc:
            log.warning("committed offsets not available yet: %s", exc)
            return False
        self._batcher.take()
        if any(tp.error is not None for tp in committed):
            log.warning("committed offsets not available yet: %s", [tp.error for tp in committed])
            return False
        try:
            for tp in committed:
                # No committed offset yet: the partition starts where the reset policy says.
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                if (tp.topic, tp.partition) in self.assigned:
                    consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            log.warning("cannot seek to the committed offsets yet: %s", exc)
            return False
        log.info("reading again from the committed offsets of %d partitions", len(committed))
        self._from_committed = False
        return True

    def _rewind(
        self,
        consumer: Consumer,
        msgs: list[Message],
        earlier: dict[tuple[str, int], int] | None = None,
    ) -> None:
        starts = rewind_offsets(position(m) for m in msgs if m.error() is None)
        for key, offset in (earlier or {}).items():
            starts[key] = min(offset, starts.get(key, offset))
        for (topic, partition), offset in starts.items():
            if (topic, partition) in self.assigned:
                consumer.seek(TopicPartition(topic, partition, offset))

    def process(self, consumer: Consumer, delivery: Delivery, msgs: list[Message]) -> BatchStats:
        """Score one batch, dead-letter its bad records, deliver everything, then commit."""
        good: list[Message] = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            else:
                log.warning("consumer error: %s", err)
        model = self.slot.model  # one reference per batch: a swap lands between batches
        assert model is not None, "the service starts consuming only once a model is loaded"
        if not good:
            return BatchStats(len(msgs), 0, 0, model.version.version, 0.0)
        self.metrics.consumed.labels(self.source).inc(len(good))
        batch = self.decoder(
            [m.value() for m in good], [codec.content_type_of(m.headers()) for m in good]
        )
        failures = list(batch.failures)
        inference_s = 0.0
        delivery.begin()
        if len(batch):
            t0 = time.perf_counter()
            try:
                probs = model.predict(batch.inputs)
            except Exception as exc:  # a model that cannot score this batch: find who fails
                log.warning(
                    "scoring failed for %d events (%s); splitting the batch", len(batch), exc
                )
                batch, probs, failed = score_apart(model.predict, batch)
                failures += failed
            inference_s = time.perf_counter() - t0
            bad = ~np.isfinite(probs).all(axis=1) if len(probs) else np.zeros(0, dtype=bool)
            if bad.any():  # a score that is not a number is no score: dead-letter those events
                failures += [
                    (batch.positions[i], dl.CodecError(dl.SCORING_FAILED, "non-finite scores"))
                    for i in np.flatnonzero(bad).tolist()
                ]
                keep = np.flatnonzero(~bad)
                batch, probs = batch.take(keep), probs[keep]
            if len(batch):
                self._produce_results(delivery, batch, probs, model)
                self.metrics.inference_seconds.labels(self.modality).observe(inference_s)
                self.metrics.batch_size.labels(self.modality).observe(len(batch))
        for pos, error in failures:
            self._dead_letter(delivery, good[pos], error)
        consumed = [position(m) for m in good]
        offsets = commit_offsets(consumed)
        delivery.commit(
            [TopicPartition(t, p, o) for (t, p), o in offsets.items()], rewind_offsets(consumed)
        )
        scored = len(good) - len(failures)
        return BatchStats(len(good), scored, len(failures), model.version.version, inference_s)

    def _produce_results(
        self,
        delivery: Delivery,
        batch: DecodedBatch,
        probs: npt.NDArray[np.float32],
        model: LoadedModel,
    ) -> None:
        mv = model.version
        classes = mv.classes
        index, confidence = top1(probs)
        now_ms = int(time.time() * 1000)
        record: dict[str, Any] = {
            "schema_version": 1,
            "modality": self.modality,
            "model_name": mv.name,
            "model_version": mv.version,
            "classes": classes,
            "scored_time_ms": now_ms,
        }
        rows = probs.astype("<f4", copy=False)
        produce = delivery.produce
        topic = self.results_topic
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
            produce(topic, asset_id, encode_record("InferenceResult", record), AVRO_HEADERS)
        m = self.metrics
        m.produced.labels(topic).inc(len(batch))
        counts = np.bincount(index, minlength=len(classes))
        for c in np.flatnonzero(counts).tolist():
            m.predictions.labels(mv.name, classes[c]).inc(int(counts[c]))
        m.confidence.observe_many((mv.name, str(mv.version)), confidence)
        m.end_to_end.observe_many((self.modality,), (now_ms - batch.event_time_ms).clip(0) / 1000.0)

    def _dead_letter(self, delivery: Delivery, msg: Message, error: dl.CodecError) -> None:
        rec = dlq_record(msg, error, self.settings.service_name)
        delivery.produce(self.dlq_topic, rec.key, rec.value, rec.headers)
        self.metrics.dead_letters.labels(rec.envelope.source_topic, error.error_class).inc()
        log.info(describe(rec.envelope))
