"""Where an event's latency goes, stage by stage, from clocks the run already has.

The source and results topics of a latency run stamp records with the broker's append time
(`message.timestamp.type=LogAppendTime`), the handler marks each batch's stages (wall clock)
and the offsets it covered, and the reader notes when each result arrived. With one machine's
clock for all of them, an event's time from its planned send to its arrival splits exactly
into six stages that add up:

- to broker: planned send to the source record's append (the sender's queue, its linger,
  the request);
- fetch: append to the batch being taken by the handler (the consumer's fetch, and the time
  a record waits in the client while the loop is busy with the batch before);
- score: taken to scored (decoding and the model call, for the whole batch);
- produce: scored to the results handed to the producer (encoding, produce calls);
- to ack: handed over to the result's append (the producer's linger and request; for
  exactly-once also the transaction's commit, which is when the reader may see it);
- reader: the result's append to its arrival at the reader.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from driftline.schemas import codec
from driftline.schemas.messages import CameraImage, SensorWindow
from driftline.services.inference.handler import Marks
from driftline.services.runtime.kafka import admin
from driftline.services.runtime.settings import KafkaSettings

STAGES = ("to_broker", "fetch", "score", "produce", "to_ack", "reader")


def stamp_append_time(kafka: KafkaSettings, topics: Iterable[str]) -> None:
    """Make the broker stamp these (fresh, empty) topics' records with its append time."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
    )

    entry = ConfigEntry(
        "message.timestamp.type",
        "LogAppendTime",
        incremental_operation=AlterConfigOpType.SET,
    )
    resources = [
        ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[entry])
        for name in topics
    ]
    client = admin(kafka)  # held until every answer came: a dropped client cancels them
    for future in client.incremental_alter_configs(resources).values():
        future.result(timeout=30)


def source_appends(
    kafka: KafkaSettings, topic: str, modality: str, timeout_s: float = 60.0
) -> dict[str, tuple[int, int, float]]:
    """{event id: (partition, offset, append time s)} of every record on the source topic."""
    kind: type[SensorWindow] | type[CameraImage] = (
        SensorWindow if modality == "sensor" else CameraImage
    )
    consumer = Consumer(
        kafka.client_config(**{"group.id": "bench-stages", "enable.auto.commit": False})
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends: dict[int, int] = {}
        parts = []
        for p in meta.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = high
            parts.append(TopicPartition(topic, p, 0))
        consumer.assign(parts)
        out: dict[str, tuple[int, int, float]] = {}
        left = sum(ends.values())
        deadline = time.monotonic() + timeout_s
        while left > 0 and time.monotonic() < deadline:
            for m in consumer.consume(5000, timeout=0.5):
                if m.error() is not None or m.value() is None:
                    continue
                left -= 1
                event = codec.decode(kind, m.value() or b"")
                out[event.event_id] = (m.partition() or 0, m.offset() or 0, m.timestamp()[1] / 1e3)
        return out
    finally:
        consumer.close()


@dataclass
class BatchIndex:
    """Finds the batch (its marks) that first took a record, by partition and offset: a
    record read again after a rewind belongs to the batch that took it first."""

    first: dict[tuple[int, int], Marks]

    @classmethod
    def of(cls, marks: Sequence[Marks]) -> BatchIndex:
        first: dict[tuple[int, int], Marks] = {}
        for m in marks:
            for (_topic, partition), (start, end) in m.spans.items():
                for offset in range(start, end):
                    first.setdefault((partition, offset), m)
        return cls(first)

    def find(self, partition: int, offset: int) -> Marks | None:
        return self.first.get((partition, offset))


def breakdown(
    events: Iterable[str],
    planned: Mapping[str, float],
    arrived: Mapping[str, float],
    result_append: Mapping[str, float],
    sources: Mapping[str, tuple[int, int, float]],
    marks: Sequence[Marks],
) -> dict[str, Any]:
    """Per stage, p50 and p99 (ms) over the events, and the mean of each stage over the
    slowest 1% of them (what the tail is made of)."""
    index = BatchIndex.of(marks)
    rows: list[tuple[float, ...]] = []
    for e in events:
        src, res = sources.get(e), result_append.get(e)
        if src is None or res is None or e not in arrived:
            continue
        m = index.find(src[0], src[1])
        if m is None:
            continue
        t = (planned[e], src[2], m.taken_s, m.scored_s, m.produced_s, res, arrived[e])
        rows.append(tuple(b - a for a, b in itertools.pairwise(t)))
    if not rows:
        return {"events": 0}
    a = np.asarray(rows) * 1000.0
    total = a.sum(axis=1)
    tail = a[total >= np.quantile(total, 0.99)]
    out: dict[str, Any] = {"events": len(rows)}
    for i, name in enumerate(STAGES):
        col = a[:, i]
        out[name] = {
            "p50_ms": float(np.quantile(col, 0.5)),
            "p99_ms": float(np.quantile(col, 0.99)),
            "tail_mean_ms": float(tail[:, i].mean()),
        }
    out["tail_total_mean_ms"] = float(total[total >= np.quantile(total, 0.99)].mean())
    return out


def describe(b: Mapping[str, Any]) -> str:
    """One line: each stage's p50/p99, and its share of the slowest 1%."""
    if not b.get("events"):
        return "stages: not measured"
    parts = [
        f"{name.replace('_', ' ')} {b[name]['p50_ms']:.1f}/{b[name]['p99_ms']:.1f}"
        f" ({b[name]['tail_mean_ms']:.1f})"
        for name in STAGES
    ]
    return (
        "stages p50/p99 ms (mean in the slowest 1%, "
        f"{b['tail_total_mean_ms']:.1f} ms in all): " + ", ".join(parts)
    )
