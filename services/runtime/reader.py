"""Read a topic whole, without joining a consumer group: to its end, or on and on.

Every reader of a whole topic in driftline is this one: the registry (read from the
beginning at every start, then followed), a dead-letter queue (read up to the ends taken
before reading, since a replay adds to it), the features rebuild (results and labelled
windows from the beginning). Partition-EOF events mark a partition's end even when its log
ends in transaction markers, which a high watermark alone would not show.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from driftline.services.runtime.settings import KafkaSettings

POLL_S = 0.5


class TopicMissing(RuntimeError):
    """The topic does not exist (or its metadata says it is in error)."""


@dataclass(frozen=True)
class ReadTo:
    """Where reading stops: every partition's EOF (`ends` None) or the offsets in `ends`."""

    ends: dict[int, int] | None = None


TO_EOF = ReadTo()


class TopicReader:
    """An assigned consumer over every partition of one topic (no group is joined).

    `name` is the group id librdkafka requires; it is never used to commit, except by a
    caller that commits on purpose (the dead-letter replay keeps its progress that way).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        name: str,
        *,
        timeout_s: float = 30.0,
        missing_hint: str = "run `driftline topics create` first",
        **overrides: Any,
    ) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self.missing_hint = missing_hint
        self.consumer = Consumer(
            kafka.client_config(
                **{
                    "group.id": name,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                    **overrides,
                }
            )
        )
        self._partitions: list[int] | None = None

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.consumer.close()

    def partitions(self) -> list[int]:
        if self._partitions is None:
            meta = self.consumer.list_topics(self.topic, timeout=self.timeout_s)
            tmeta = meta.topics.get(self.topic)
            if tmeta is None or tmeta.error is not None:
                raise TopicMissing(f"topic {self.topic!r} not found; {self.missing_hint}")
            self._partitions = sorted(tmeta.partitions)
        return self._partitions

    def ends(self) -> dict[int, int]:
        """Every partition's current end offset (the next offset to be written)."""
        out = {}
        for p in self.partitions():
            _, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=self.timeout_s
            )
            out[p] = high
        return out

    def committed(self) -> dict[int, int]:
        """Offsets committed under the reader's name, OFFSET_BEGINNING where there are none."""
        parts = [TopicPartition(self.topic, p) for p in self.partitions()]
        return {
            tp.partition: tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            for tp in self.consumer.committed(parts, timeout=self.timeout_s)
        }

    def commit(self, next_offsets: dict[int, int]) -> None:
        self.consumer.commit(
            offsets=[TopicPartition(self.topic, p, o) for p, o in next_offsets.items()],
            asynchronous=False,
        )

    def batches(
        self,
        starts: dict[int, int] | None = None,
        *,
        until: ReadTo | None = TO_EOF,
        batch: int = 500,
        stop: Callable[[], bool] | None = None,
        on_end: Callable[[], None] | None = None,
        on_error: Callable[[KafkaError], None] | None = None,
    ) -> Iterator[list[Message]]:
        """Batches of records from `starts` (default: the beginning of every partition).

        With `until` (default: every partition's EOF) the batches stop there, and a read that
        brings nothing for `timeout_s` raises TimeoutError. With `until=None` the topic is
        followed until stop() is true; `on_end` is called once, when every partition has
        first been read to its end. A read error other than EOF raises RuntimeError, or is
        passed to `on_error` when given.
        """
        parts = self.partitions()
        begin = starts if starts is not None else dict.fromkeys(parts, OFFSET_BEGINNING)
        self.consumer.assign([TopicPartition(self.topic, p, o) for p, o in begin.items()])
        limits = until.ends if until is not None else None
        pending = set(begin)
        if limits is not None:
            pending = {p for p in pending if limits.get(p, 0) > 0}
        ended = False
        deadline = time.monotonic() + self.timeout_s
        while until is None or pending:
            if stop is not None and stop():
                return
            if not pending and not ended:
                ended = True
                if on_end is not None:
                    on_end()
            msgs = self.consumer.consume(batch, timeout=POLL_S)
            if not msgs:
                if until is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.topic}: nothing read for {self.timeout_s:.0f}s before its end"
                    )
                continue
            deadline = time.monotonic() + self.timeout_s
            out: list[Message] = []
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition() or 0)
                    elif on_error is not None:
                        on_error(err)
                    else:
                        raise RuntimeError(f"reading {self.topic}: {err}")
                    continue
                partition, offset = m.partition() or 0, m.offset() or 0
                if limits is not None:
                    end = limits.get(partition, 0)
                    if offset >= end:
                        pending.discard(partition)
                        continue
                    if offset + 1 >= end:
                        pending.discard(partition)
                out.append(m)
            if out:
                yield out
