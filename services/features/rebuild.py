"""`driftline features rebuild`: replay Kafka into Redis with the app's own aggregation code.

Statistics and live accuracy's scored counts come from inference.results, its labels from
training.windows (the labelled windows the join emitted; a window repeated after a crash counts
once), both read from the beginning to the end they had when the rebuild started. Per series,
events are folded in the order of their partition, as the app does, so the same events give
the same windows; writes are last-write-wins, so a rebuild over an existing key space converges
to the same hashes, and `--fresh` first deletes the prefix.
Drift hashes are not replayed: the running app rewrites them at its next evaluation.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from typing_extensions import override

from driftline.schemas import headers as h
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.pipeline import FeaturesPipeline, PipelineTables
from driftline.services.features.records import Outbox, RawRecord
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.startup import deployed_join_partitions
from driftline.services.features.store import RedisFeatureStore
from driftline.services.features.tables import DictTable
from driftline.services.runtime.reader import ReadTo, TopicReader

BATCH = 2000
FLUSH_EVERY = 50_000


class DiscardOutbox(Outbox):
    """A replay produces nothing: bad records were dead-lettered when first consumed."""

    def __init__(self) -> None:
        self.discarded = 0

    @override
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: h.HeaderList,
        *,
        wait: bool = False,
    ) -> None:
        self.discarded += 1


@dataclass
class RebuildReport:
    results: int = 0
    labelled_windows: int = 0
    deleted_keys: int = 0
    seconds: float = 0.0


def read_to_end(
    settings: FeaturesSettings, topic: str, timeout_s: float = 30.0
) -> Iterator[list[RawRecord]]:
    """Batches of a topic from the beginning up to the end it had when reading started."""
    name = f"driftline-features-rebuild-{uuid.uuid4().hex[:8]}"
    with TopicReader(settings.kafka, topic, name, timeout_s=timeout_s) as reader:
        for msgs in reader.batches(until=ReadTo(reader.ends()), batch=BATCH):
            yield [
                RawRecord(
                    topic,
                    m.partition() or 0,
                    m.offset() or 0,
                    m.key(),
                    m.value(),
                    h.header_items(m.headers()),
                )
                for m in msgs
            ]


def delete_prefix(settings: FeaturesSettings) -> int:
    """Delete every key under the prefix (SCAN + UNLINK, in batches)."""
    import redis

    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{settings.redis_key_prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += int(client.unlink(*batch))
            batch.clear()
    if batch:
        deleted += int(client.unlink(*batch))
    client.close()
    return deleted


async def _rebuild(
    settings: FeaturesSettings, report: RebuildReport, progress: Callable[[str], None]
) -> None:
    store = RedisFeatureStore.from_url(
        settings.redis_url.get_secret_value(), settings.redis_timeout_s
    )
    pipeline = FeaturesPipeline(
        settings,
        FeaturesMetrics(CollectorRegistry()),
        store,
        DiscardOutbox(),
        PipelineTables(stats=DictTable(), accuracy=DictTable()),
    )
    stats = pipeline.stats
    assert stats is not None
    try:

        async def flush() -> None:
            if not await pipeline.flush(now=0.0):
                raise RuntimeError("Redis refused the writes; is it running?")

        since_flush = 0
        topics = settings.kafka.topics
        for batch in read_to_end(settings, topics.inference_results):
            await pipeline.on_results(batch, forward=False)
            pipeline.on_scored_results(batch)  # live accuracy's scored counts
            report.results += len(batch)
            since_flush += len(batch)
            if since_flush >= FLUSH_EVERY:
                # Flush, then forget buckets no later event can change: bounded memory.
                await flush()
                stats.evict()
                since_flush = 0
                progress(f"  {report.results:,} results replayed")
        for batch in read_to_end(settings, topics.training_windows):
            pipeline.on_labelled_windows(batch)
            report.labelled_windows += len(batch)
        await flush()
    finally:
        await store.close()


def rebuild(
    settings: FeaturesSettings, *, fresh: bool = False, progress: Callable[[str], None] = print
) -> RebuildReport:
    report = RebuildReport()
    t0 = time.perf_counter()
    settings = deployed_join_partitions(settings)
    if fresh:
        report.deleted_keys = delete_prefix(settings)
        progress(f"deleted {report.deleted_keys} keys under {settings.redis_key_prefix!r}")
    asyncio.run(_rebuild(settings, report, progress))
    report.seconds = time.perf_counter() - t0
    return report
