"""Reading inputs back from Kafka by offset, for the label join (which keeps only references).

A labelled event's input is read from sensor.windows or camera.images at the position the join
recorded, once per label batch: the positions are grouped by partition, near offsets into runs
read in one go, and every partition's run of a round fetched side by side. The confluent-kafka
consumer is blocking, so it runs in one worker thread (the consumer is not thread-safe), off
the event loop. It only `assign`s partitions: no consumer group, nothing committed.

An input past its topic's retention is simply not found (None): the caller dead-letters the
label with that reason. Topic retention of the inputs is set to cover the label retention
(schemas.topics.input_retention_ms).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.services.runtime.settings import KafkaSettings

Position = tuple[str, int, int]  # topic, partition, offset

RUN_GAP = 64  # offsets between two wanted ones read through rather than assigned again


@dataclass(frozen=True)
class FetchedRecord:
    value: bytes | None
    headers: h.HeaderList

    @property
    def content_type(self) -> str | None:
        return codec.content_type_of(self.headers)


class InputReader(Protocol):
    """Reads records by position; a position not found (deleted, out of range) is absent."""

    async def read(self, positions: Sequence[Position]) -> dict[Position, FetchedRecord]: ...


@dataclass
class MemoryInputReader:
    """The in-memory twin: records put by position, as a topic would hold them."""

    records: dict[Position, FetchedRecord] = field(default_factory=dict)
    reads: int = 0

    def put(self, position: Position, value: bytes | None, headers: h.HeaderList) -> None:
        self.records[position] = FetchedRecord(value, list(headers))

    def forget(self, position: Position) -> None:
        """Drop a record, as retention would."""
        self.records.pop(position, None)

    async def read(self, positions: Sequence[Position]) -> dict[Position, FetchedRecord]:
        self.reads += 1
        return {p: self.records[p] for p in positions if p in self.records}


def runs(offsets: Sequence[int], gap: int = RUN_GAP) -> list[tuple[int, int]]:
    """Sorted distinct offsets as [first, last] runs whose neighbours are at most `gap` apart."""
    out: list[tuple[int, int]] = []
    for o in sorted(set(offsets)):
        if out and o - out[-1][1] <= gap:
            out[-1] = (out[-1][0], o)
        else:
            out.append((o, o))
    return out


class KafkaInputReader:
    """Reads records by offset with a confluent-kafka Consumer (assign + consume)."""

    def __init__(self, kafka: KafkaSettings, group_id: str, *, timeout_s: float = 10.0) -> None:
        self.config: dict[str, Any] = {
            **kafka.client_config(),
            "group.id": group_id,  # required by the client; never joined nor committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # an offset below the log start: skip ahead
        }
        self.timeout_s = timeout_s
        self._consumer: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="join-readback")

    async def read(self, positions: Sequence[Position]) -> dict[Position, FetchedRecord]:
        if not positions:
            return {}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._read, list(positions))

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._executor.shutdown(wait=False)

    def _read(self, positions: list[Position]) -> dict[Position, FetchedRecord]:
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        if self._consumer is None:
            self._consumer = Consumer(self.config)
        consumer = self._consumer
        wanted: dict[tuple[str, int], set[int]] = {}
        for topic, partition, offset in positions:
            wanted.setdefault((topic, partition), set()).add(offset)
        pending = {tp: runs(sorted(offsets)) for tp, offsets in wanted.items()}
        out: dict[Position, FetchedRecord] = {}
        deadline = time.monotonic() + self.timeout_s
        while pending and time.monotonic() < deadline:
            # One round: the next run of every partition, fetched side by side.
            current = {tp: todo.pop(0) for tp, todo in pending.items()}
            pending = {tp: todo for tp, todo in pending.items() if todo}
            consumer.assign([TopicPartition(t, p, first) for (t, p), (first, _) in current.items()])
            while current and time.monotonic() < deadline:
                batch = consumer.consume(num_messages=1000, timeout=0.5)
                for msg in batch:
                    tp = (msg.topic(), msg.partition())
                    run = current.get(tp)
                    if run is None:
                        continue
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            del current[tp]  # nothing more: the rest of the run is missing
                        continue
                    offset = msg.offset()
                    if offset in wanted[tp]:
                        out[(tp[0], tp[1], offset)] = FetchedRecord(
                            msg.value(), list(msg.headers() or [])
                        )
                    if offset >= run[1]:
                        del current[tp]
        consumer.unassign()
        return out
