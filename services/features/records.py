"""What the features pipeline consumes and sends: raw Kafka records and the outbox they go to."""

from __future__ import annotations

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
