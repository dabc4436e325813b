"""What the features pipeline consumes and sends: raw Kafka records (one by one, or a batch as
columns) and the outbox they go to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from driftline.schemas import codec
from driftline.schemas import headers as h


@dataclass(frozen=True)
class RawRecord:
    """One consumed Kafka record, as the pipeline sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: h.HeaderList = field(default_factory=list)

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v.encode() if isinstance(v, str) else v
        return None

    @property
    def content_type(self) -> str | None:
        return codec.content_type_of(self.headers)


@dataclass(frozen=True)
class ResultRecords:
    """A consumed batch of one topic as columns; `record(i)` builds the whole of record i
    (for its dead letter), so a consumer need not make a RawRecord per record."""

    topic: str
    values: Sequence[bytes | None]
    content_types: Sequence[str | None]
    partitions: Sequence[int]
    offsets: Sequence[int]
    record: Callable[[int], RawRecord]

    @classmethod
    def of(cls, records: Sequence[RawRecord]) -> ResultRecords:
        return cls(
            topic=records[0].topic if records else "",
            values=[r.value for r in records],
            content_types=[r.content_type for r in records],
            partitions=[r.partition for r in records],
            offsets=[r.offset for r in records],
            record=records.__getitem__,
        )


class Outbox(Protocol):
    """Sends a record to a topic (in the app: a faust topic send, attached to the offsets)."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: h.HeaderList,
        *,
        wait: bool = False,
    ) -> None:
        """Send; with `wait`, now and until acknowledged, else when the source commits."""
        ...
