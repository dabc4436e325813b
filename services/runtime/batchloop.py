"""The batch loop every confluent-kafka service runs: consume, batch, hand over, rewind.

A service is a handler of batches. The loop owns the consumer: it subscribes with the
cooperative-sticky protocol, ticks the service's health, keeps the per-partition lag gauges
from librdkafka's statistics, and when a batch fails it seeks back so the same records come
again. The handler owns what a batch means: decoding, its outputs, and when its input offsets
are committed.

Rebalance callbacks run inside consume(), between two batches, so no batch is half done when
a partition leaves: records taken from a revoked partition but not yet handed over are
dropped uncommitted (its next owner reads them again from the committed offset), and the
handler is told, so it can finish or give up what it holds for those partitions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge

from driftline.services.core.batching import Batcher, BatchPolicy
from driftline.services.core.scoring import rewind_offsets
from driftline.services.runtime.kafka import consumer_config, position
from driftline.services.runtime.metrics import Health
from driftline.services.runtime.settings import KafkaSettings

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]
RETRY_BACKOFF_S = 0.5
COMMITTED_TIMEOUT_S = 2.0
IDLE_POLL_S = 0.1

S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)


class RewindBatch(Exception):
    """A batch's outputs were not all committed: seek back and hand it over again.

    `rewind` names where to seek per partition when it differs from the current batch's
    first offsets (a pipelined batch that failed after later ones were taken). With
    `from_committed`, whether the batch committed is not known: the loop reads again from
    the group's committed offsets, which say it.
    """

    def __init__(
        self, message: str, rewind: Offsets | None = None, *, from_committed: bool = False
    ) -> None:
        super().__init__(message)
        self.rewind = rewind
        self.from_committed = from_committed


class BatchHandler(Protocol[S_co]):
    """What a service does with the batches the loop hands it."""

    def start(self, consumer: Consumer) -> None:
        """The consumer exists (not yet subscribed): build what commits through it."""

    def assigned(
        self, consumer: Consumer, parts: list[TopicPartition]
    ) -> list[TopicPartition] | None:
        """Partitions arrived; return where to start them, or None for their committed offsets."""

    def revoked(self, parts: list[TopicPartition]) -> Offsets | None:
        """Partitions left; settle what is held for them. Returns offsets to rewind the
        partitions still owned to, when settling failed for batches that include them."""

    def handle(self, msgs: list[Message]) -> S_co:
        """Process one batch and commit it; raise RewindBatch, KafkaException or BufferError
        when it did not commit, and the loop hands the same records over again."""

    def idle(self) -> None:
        """No batch was ready this poll (may raise RewindBatch)."""

    def recover(self, waited_s: float) -> None:
        """Before the loop reads again from the group's committed offsets; waited_s is how
        long it has waited for them so far (0 at the first try)."""

    def abandon(self) -> None:
        """A batch failed with a Kafka error before its commit: drop what it left open."""

    def close(self) -> None:
        """The loop is leaving the group: flush and release."""


@dataclass(frozen=True)
class LoopMetrics:
    """The loop's own collectors: failed batches by stage, and lag by (topic, partition)."""

    batch_failures: Counter
    consumer_lag: Gauge | None = None


@dataclass(frozen=True)
class LoopConfig:
    kafka: KafkaSettings
    group_id: str
    topics: list[str]
    policy: BatchPolicy
    statistics_interval_ms: int = 0
    # How soon the group gives a silent member's partitions to the others (librdkafka's
    # background thread heartbeats every quarter of it); None: librdkafka's 45 s.
    session_timeout_ms: int | None = None


class BatchLoop(Generic[S]):
    """Drives one handler from one consumer group until asked to stop."""

    def __init__(
        self,
        config: LoopConfig,
        handler: BatchHandler[S],
        metrics: LoopMetrics,
        health: Health | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.metrics = metrics
        self.health = health
        self.assigned: set[tuple[str, int]] = set()
        self._batcher: Batcher[Message] = Batcher(config.policy)
        self._lag_series: set[tuple[str, str]] = set()
        self._pending_rewind: Offsets | None = None
        self._from_committed = False
        self._committed_wait_since = 0.0

    # Rebalance callbacks: they run inside consume(), between two batches.

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in parts)
        log.info("assigned partitions %s", sorted(p.partition for p in parts), extra=_fields(parts))
        starts = self.handler.assigned(consumer, parts)
        if starts is not None:
            consumer.incremental_assign(starts)

    def _on_revoke(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in parts}
        self.assigned.difference_update(revoked)
        dropped = self._batcher.discard(lambda m: (m.topic(), m.partition()) in revoked)
        if dropped:
            log.info("dropped %d unprocessed records of revoked partitions", dropped)
        rewind = self.handler.revoked(parts)
        if rewind:
            self._pending_rewind = rewind
        lag = self.metrics.consumer_lag
        for topic, partition in revoked:
            series = (topic, str(partition))
            if lag is not None and series in self._lag_series:
                lag.remove(*series)
                self._lag_series.discard(series)
        log.info("revoked partitions %s", sorted(p.partition for p in parts), extra=_fields(parts))

    def _on_stats(self, stats_json: str) -> None:
        lag = self.metrics.consumer_lag
        if lag is None:
            return
        stats = json.loads(stats_json)
        for topic, tstats in stats.get("topics", {}).items():
            for pid, pstats in tstats.get("partitions", {}).items():
                behind = pstats.get("consumer_lag", -1)
                if pid == "-1" or behind is None or behind < 0:
                    continue
                lag.labels(topic, pid).set(behind)
                self._lag_series.add((topic, pid))

    def _consumer(self) -> Consumer:
        extra: dict[str, Any] = {}
        if self.config.statistics_interval_ms and self.metrics.consumer_lag is not None:
            extra = {
                "statistics.interval.ms": self.config.statistics_interval_ms,
                "stats_cb": self._on_stats,
            }
        if self.config.session_timeout_ms is not None:
            extra["session.timeout.ms"] = self.config.session_timeout_ms
            extra["heartbeat.interval.ms"] = max(250, self.config.session_timeout_ms // 4)
        return Consumer(consumer_config(self.config.kafka, self.config.group_id, **extra))

    def run(self, stop: Callable[[], bool], on_batch: Callable[[S], None] | None = None) -> None:
        """Consume until stop() is true, finish the batch in hand, then leave the group."""
        consumer = self._consumer()
        handler = self.handler
        handler.start(consumer)
        consumer.subscribe(
            self.config.topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        batcher = self._batcher
        try:
            while True:
                stopping = stop()
                if self.health is not None:
                    self.health.tick()
                if stopping:
                    if not len(batcher) or self._from_committed:
                        break  # what is left is uncommitted: read again by the next owner
                elif self._from_committed:
                    if not self._seek_committed(consumer):
                        # The coordinator is away or the group is rejoining: consume nothing
                        # but keep polling, which serves the rebalance the group may need
                        # before it answers (what is read now is read again from the
                        # committed offsets).
                        consumer.consume(num_messages=batcher.room(), timeout=RETRY_BACKOFF_S)
                    continue
                else:
                    if self._pending_rewind:
                        batcher.take()
                        self._rewind(consumer, [], self._pending_rewind)
                        self._pending_rewind = None
                    batcher.add(self._fetch(consumer), time.monotonic())
                    if not batcher.ready(time.monotonic()):
                        try:
                            handler.idle()
                        except RewindBatch as exc:
                            self._failed(consumer, [], exc)
                        continue
                msgs = batcher.take()
                try:
                    stats = handler.handle(msgs)
                except (RewindBatch, KafkaException, BufferError) as exc:
                    if not isinstance(exc, RewindBatch):
                        handler.abandon()
                    self._failed(consumer, msgs, exc, stopping=stopping)
                    if stopping:
                        break  # uncommitted: replayed by whoever reads the partition next
                    continue
                if on_batch is not None:
                    on_batch(stats)
        finally:
            handler.close()
            consumer.close()

    def _fetch(self, consumer: Consumer) -> list[Message]:
        """What the next batch gets: with an empty batch, the first record as soon as one
        arrives (poll) and then every record already fetched, without waiting (consume with
        no timeout). A batch therefore closes as soon as nothing more is waiting, and grows
        to the policy's size under a backlog. With a max_wait, a batch that has records
        waits up to that long for more (consume blocks until full or out of time)."""
        batcher = self._batcher
        room = batcher.room()
        if len(batcher):
            wait = batcher.wait_s(time.monotonic(), IDLE_POLL_S)
            return consumer.consume(num_messages=room, timeout=wait)
        first = consumer.poll(IDLE_POLL_S)
        if first is None:
            return []
        if room <= 1:
            return [first]
        return [first, *consumer.consume(num_messages=room - 1, timeout=0)]

    def _failed(
        self, consumer: Consumer, msgs: list[Message], exc: Exception, *, stopping: bool = False
    ) -> None:
        """A batch (or batches in flight) did not commit: read them again."""
        log.warning("batch not committed, rewinding to retry it: %s", exc)
        self.metrics.batch_failures.labels("deliver").inc()
        if isinstance(exc, RewindBatch) and exc.from_committed:
            # Whether it committed is not known: the group's committed offsets will say.
            self._batcher.take()
            self._from_committed = True
            self._committed_wait_since = time.monotonic()
        else:
            rewind = exc.rewind if isinstance(exc, RewindBatch) else None
            self._rewind(consumer, msgs, rewind)
        if not stopping:
            time.sleep(RETRY_BACKOFF_S)

    def _seek_committed(self, consumer: Consumer) -> bool:
        """Seek every assigned partition to the group's committed offset; False if unknown."""
        parts = [TopicPartition(t, p) for t, p in sorted(self.assigned)]
        try:
            self.handler.recover(time.monotonic() - self._committed_wait_since)
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
        self, consumer: Consumer, msgs: list[Message], earlier: Offsets | None = None
    ) -> None:
        starts = rewind_offsets(position(m) for m in msgs if m.error() is None)
        for key, offset in (earlier or {}).items():
            starts[key] = min(offset, starts.get(key, offset))
        for (topic, partition), offset in starts.items():
            if (topic, partition) in self.assigned:
                consumer.seek(TopicPartition(topic, partition, offset))


def _fields(parts: list[TopicPartition]) -> dict[str, object]:
    """A rebalance's structured log fields (JSON logs): which topics and partitions."""
    return {
        "topics": sorted({p.topic for p in parts}),
        "partitions": sorted(p.partition for p in parts),
    }
