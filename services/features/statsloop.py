"""The statistics role (`driftline features --role stats`) on the shared batch loop, not faust.

One faust worker spends about 110 us of its event loop on each consumed record before our code
sees it (`driftline bench features`: ~8,400 results/s through faust where the same pipeline
folds ~125,000/s in process), well short of what one inference consumer writes. So the stats
role runs on the confluent-kafka batch loop that drives inference and alerts, with the same
pipeline (FeaturesPipeline.on_results and flush), the same state and the same Redis writes;
the join, which needs faust's tables and timers, stays on faust (roles join and all).

State: the stats table of the faust app, with its changelog `<app id>-stats-changelog`
(compacted, co-partitioned with inference.results, keys and values as faust writes them), so
a worker of either kind restores what the other wrote. It is held in memory (ChangelogTable);
a partition assigned to this worker is restored by reading its changelog partition to the end
before any of its records is handled, then every bucket held is written to Redis again, as
after a faust recovery; a revoked partition's state is dropped: its next owner restores it.

Delivery, as in the faust app: a batch's changelog records and dead letters are acknowledged
before its input offsets are committed (a crash replays the batch; each bucket's last folded
offset, stored with it, makes the replay fold nothing twice). A batch that fails before its
commit is rewound by the loop: the buckets it changed are sent to the changelog again (their
whole value) before the next batch, and its records, read again, are known as folded. Redis
is written from the state every flush_interval_s, after a batch or while idle; an outage
delays the writes and loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from itertools import chain

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.pipeline import FeaturesPipeline, PipelineTables
from driftline.services.features.records import RawRecord, ResultRecords
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.store import FeatureStore
from driftline.services.features.tables import KEY_SEP, Item, key_partition
from driftline.services.runtime.batchloop import Offsets
from driftline.services.runtime.kafka import (
    DeliveryTracker,
    RenewableProducer,
    flush_or_raise,
    position,
)
from driftline.services.runtime.reader import ReadTo, TopicReader

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 30.0


class ChangelogTable:
    """The stats table in memory, by changelog partition; every change is also produced to
    the changelog (faust's format: raw key, raw value, a tombstone for a delete)."""

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.data: dict[int, dict[bytes, bytes]] = {}
        # Changes produced since the last confirm(): sent again after a failed batch.
        self.unconfirmed: dict[tuple[int, bytes], None] = {}
        self.producer: Producer | None = None
        self.tracker = DeliveryTracker()

    def _slot(self, partition: int | None, key: bytes) -> int:
        if partition is not None:
            return partition
        return key_partition(key.split(KEY_SEP, 1)[0], self.partitions)

    def _send(self, partition: int, key: bytes) -> None:
        assert self.producer is not None, "the table produces only once the handler started"
        self.unconfirmed[(partition, key)] = None
        value = self.data.get(partition, {}).get(key)
        self.producer.produce(
            self.topic, key=key, value=value, partition=partition, on_delivery=self.tracker
        )

    def confirm(self) -> None:
        """Every change produced so far is acknowledged."""
        self.unconfirmed.clear()

    def resend(self) -> None:
        """Produce the current value of every key changed since the last confirm() again."""
        for partition, key in list(self.unconfirmed):
            if partition in self.data:  # a revoked partition's changes are its next owner's
                self._send(partition, key)
            else:
                del self.unconfirmed[(partition, key)]

    def load(self, partition: int, items: dict[bytes, bytes]) -> None:
        self.data[partition] = items

    def drop(self, partition: int) -> None:
        self.data.pop(partition, None)

    def get(self, key: bytes) -> bytes | None:
        for part in self.data.values():
            if key in part:
                return part[key]
        return None

    def put(self, partition: int | None, key: bytes, value: bytes) -> None:
        slot = self._slot(partition, key)
        self.data.setdefault(slot, {})[key] = value
        self._send(slot, key)

    def delete(self, partition: int | None, key: bytes) -> None:
        slot = self._slot(partition, key)
        if self.data.get(slot, {}).pop(key, None) is not None:
            self._send(slot, key)

    def items(self) -> Iterator[Item]:
        return iter([item for part in self.data.values() for item in part.items()])

    def scan(self, start: bytes, stop: bytes, *, reverse: bool = False) -> Iterator[Item]:
        merged = chain.from_iterable(part.items() for part in self.data.values())
        return iter(sorted((kv for kv in merged if start <= kv[0] < stop), reverse=reverse))

    def partition(self, key: bytes) -> int | None:
        for slot, part in self.data.items():
            if key in part:
                return slot
        return None

    def __len__(self) -> int:
        return sum(len(part) for part in self.data.values())


class ProducerOutbox:
    """The pipeline's outbox (dead letters) over the handler's producer."""

    def __init__(self, table: ChangelogTable) -> None:
        self.table = table  # shares its producer and delivery tracker

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: h.HeaderList,
        *,
        wait: bool = False,
    ) -> None:
        prod, tracker = self.table.producer, self.table.tracker
        assert prod is not None, "the outbox sends only once the handler started"
        prod.produce(topic, key=key, value=value, headers=list(headers), on_delivery=tracker)
        if wait:
            flush_or_raise(prod, tracker, FLUSH_TIMEOUT_S)


def columns_of(topic: str, msgs: list[Message]) -> ResultRecords:
    """A batch of consumed records as the pipeline's columns (records of one topic)."""

    def record(i: int) -> RawRecord:
        m = msgs[i]
        _, partition, offset = position(m)
        headers = h.header_items(m.headers())
        return RawRecord(topic, partition, offset, m.key(), m.value(), headers)

    return ResultRecords(
        topic=topic,
        values=[m.value() for m in msgs],
        content_types=[codec.content_type_of(m.headers()) for m in msgs],
        partitions=[m.partition() or 0 for m in msgs],
        offsets=[m.offset() or 0 for m in msgs],
        record=record,
    )


class StatsHandler:
    """The batch loop's handler of inference.results for the statistics role."""

    def __init__(
        self,
        settings: FeaturesSettings,
        metrics: FeaturesMetrics,
        store: FeatureStore,
        partitions: int,
    ) -> None:
        self.settings = settings
        self.source = settings.kafka.topics.inference_results
        self.table = ChangelogTable(settings.stats_changelog_topic, partitions)
        self.pipeline = FeaturesPipeline(
            settings, metrics, store, ProducerOutbox(self.table), PipelineTables(stats=self.table)
        )
        assert self.pipeline.stats is not None
        self.stats = self.pipeline.stats
        self.recovering = False
        self.restored_partitions: set[int] = set()
        self._loop = asyncio.new_event_loop()
        self._consumer: Consumer | None = None
        self._producer: RenewableProducer | None = None
        self._resend = False
        self._next_flush = 0.0
        self._next_evict = time.monotonic() + settings.evict_interval_s

    @property
    def ready(self) -> bool:
        return bool(self.restored_partitions) and not self.recovering

    # ---- the loop's side; rebalances come between batches ---------------------------------

    def start(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._producer = RenewableProducer(self.settings.kafka)
        self.table.producer = self._producer.producer

    def assigned(
        self, _consumer: Consumer, parts: list[TopicPartition]
    ) -> list[TopicPartition] | None:
        """Restore the new partitions' buckets from their changelog, before any record."""
        new = sorted({p.partition for p in parts if p.topic == self.source})
        if not new:
            return None
        self.recovering = True
        try:
            restored = self._restore(new)
        finally:
            self.recovering = False
        self.restored_partitions.update(new)
        log.info("restored %d window buckets of partitions %s", restored, new)
        return None  # every partition starts at its committed offset

    def _restore(self, partitions: list[int]) -> int:
        loaded: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
        with TopicReader(
            self.settings.kafka,
            self.table.topic,
            f"{self.settings.stats_group_id}-restore",
            timeout_s=self.settings.registry_timeout_s,
        ) as reader:
            ends = {p: end for p, end in reader.ends().items() if p in loaded}
            starts = dict.fromkeys(ends, OFFSET_BEGINNING)
            for batch in reader.batches(starts, until=ReadTo(ends), batch=5000):
                for m in batch:
                    key, value = m.key(), m.value()
                    part = loaded[m.partition() or 0]
                    if key is None:
                        continue
                    if value is None:
                        part.pop(key, None)
                    else:
                        part[key] = value
        items: list[Item] = []
        for partition, part in loaded.items():
            self.table.load(partition, part)
            items += part.items()
        return self.stats.restore(items)

    def revoked(self, parts: list[TopicPartition]) -> Offsets | None:
        """Drop the partitions' state: their next owner restores it from the changelog."""
        for p in parts:
            if p.topic == self.source:
                self.table.drop(p.partition)
                self.stats.forget_partition(p.partition)
                self.restored_partitions.discard(p.partition)
        return None

    def handle(self, msgs: list[Message]) -> int:
        """Fold one batch, get its changelog records and dead letters acknowledged, commit."""
        if self._consumer is None or self._producer is None:
            raise RuntimeError("the handler handles batches only once started")
        good: list[Message] = []
        for m in msgs:
            if m.error() is None:
                good.append(m)
            else:
                log.warning("consumer error: %s", m.error())
        prod, tracker = self._producer.producer, self.table.tracker
        tracker.reset()
        try:
            if self._resend:
                self.table.resend()
                self._resend = False
            columns = columns_of(self.source, good)
            if good:
                self._loop.run_until_complete(
                    self.pipeline.on_result_columns(columns, forward=False)
                )
            flush_or_raise(prod, tracker, FLUSH_TIMEOUT_S)
            self.table.confirm()
            if good:
                # The loop subscribes to inference.results alone: every record is of it.
                ends: dict[int, int] = {}
                for p, o in zip(columns.partitions, columns.offsets, strict=True):
                    if o >= ends.get(p, -1):
                        ends[p] = o + 1
                committed = self._consumer.commit(
                    offsets=[TopicPartition(self.source, p, o) for p, o in ends.items()],
                    asynchronous=False,
                )
                failed = [tp for tp in committed or [] if tp.error is not None]
                if failed:
                    raise KafkaException(
                        KafkaError(KafkaError._FAIL, f"commit failed: {failed[0]}")
                    )
        except BaseException as exc:
            # The state is ahead of what the changelog acknowledged: send it again first.
            self._resend = True
            self._producer.note(tracker.fatal)
            if self._producer.renew_if_fatal(exc):
                self.table.producer = self._producer.producer
            raise
        self._housekeeping()
        return len(good)

    def _housekeeping(self) -> None:
        """Redis every flush_interval_s; eviction every evict_interval_s."""
        now = time.monotonic()
        if now >= self._next_evict:
            self._next_evict = now + self.settings.evict_interval_s
            self._loop.run_until_complete(self.pipeline.evict())
        if now >= self._next_flush:
            self._next_flush = now + self.settings.flush_interval_s
            self._loop.run_until_complete(self.pipeline.flush())

    def idle(self) -> None:
        if self._resend:
            return  # the next batch sends the changelog again first
        self._housekeeping()

    def recover(self, waited_s: float) -> None:
        """Nothing to settle before reading again."""

    def abandon(self) -> None:
        """The batch's changes are sent to the changelog again before the next one."""
        self._resend = True

    def close(self) -> None:
        try:
            if self._producer is not None:
                self._producer.producer.flush(FLUSH_TIMEOUT_S)
            self._loop.run_until_complete(self.pipeline.flush())
            close = getattr(self.pipeline.store, "close", None)
            if close is not None:
                self._loop.run_until_complete(close())
        finally:
            self._loop.close()
