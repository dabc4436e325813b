"""Two corrections to faust-streaming's consumer, installed before the features app is built.

Both matter because inference writes `inference.results` in Kafka transactions (exactly-once):
every transaction leaves a commit marker in each partition it wrote, so the offsets a reader
sees have gaps, and an aborted transaction leaves records no reader should count.

1. Gaps. faust-streaming (0.15.3, upstream issue #606) records the gap before a record
   including that record's own offset, and ignores a gap that starts at the committed offset
   (it reads the committed offset as the last one processed; it is the next one to read).
   The record is then acked twice, the run of consecutive acked offsets that decides the
   commit ends at the duplicate, and each commit advances by one transaction at most: the
   features workers' committed offsets fell further behind with every batch inference wrote
   (seen in the soak: lag growing without bound at 500 windows/s; a restarted worker would
   read all of it again). Here a gap is exactly the offsets never delivered.
2. Isolation. faust reads `read_committed` only in its own exactly-once mode; otherwise it
   reads the records of aborted transactions too, so a batch inference aborted and scored
   again would be counted twice in the statistics. Worker consumers here read committed.
"""

from __future__ import annotations

import asyncio
from typing import Any

_INSTALLED = "_driftline_fixes"


def install() -> None:
    """Patch faust's consumer classes once per process (idempotent)."""
    from faust.transport import consumer as faust_consumer
    from faust.transport.drivers import aiokafka as faust_aiokafka

    base = faust_consumer.Consumer
    if getattr(base, _INSTALLED, False):
        return

    async def add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        # Called as (tp, last read + 1, offset of the record now read): the offsets in
        # [offset_from, offset_to) were never delivered (markers, aborted or compacted).
        committed = self._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed)  # the next offset to read
        if offset_from < offset_to:
            gaps = self._gap[tp]
            # Gaps come in offset order, each after the last: they only overlap when records
            # are read again (a seek after a rebalance). faust merges the whole tree at every
            # gap, rebuilding it: with a gap per transaction that was a third of a worker's
            # time (seen in the soak), so merge only what overlaps.
            if gaps.overlaps(offset_from, offset_to):
                gaps.addi(offset_from, offset_to)
                await asyncio.sleep(0)  # as faust does: let other coroutines run
                gaps.merge_overlaps()
            else:
                gaps.addi(offset_from, offset_to)

    base._add_gap = add_gap  # type: ignore[method-assign]

    thread = faust_aiokafka.AIOKafkaConsumerThread
    create = thread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        # Read by the fetcher aiokafka builds in start(), which has not run yet.
        consumer._isolation_level = "read_committed"
        return consumer

    thread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
    setattr(base, _INSTALLED, True)
