"""A Delivery that keeps what it is given, for tests and benches that run the inference
handler without a broker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import TopicPartition

from driftline.schemas import headers as h
from driftline.services.runtime.batchloop import Offsets, RewindBatch


@dataclass
class InMemoryDelivery:
    """Keeps what a batch delivers: its records, in order, and each commit's offsets.

    `fail_commits` makes that many next commits raise RewindBatch (as a lost delivery report
    would), so a test can watch the handler's batch stay uncommitted.
    """

    records: list[tuple[str, bytes | str | None, bytes | None, h.HeaderList]] = field(
        default_factory=list
    )
    commits: list[list[TopicPartition]] = field(default_factory=list)
    fail_commits: int = 0
    open_batch: list[tuple[str, bytes | str | None, bytes | None, h.HeaderList]] | None = None

    def begin(self) -> None:
        self.open_batch = []

    def produce(
        self, topic: str, key: bytes | str | None, value: bytes | None, headers: h.HeaderList
    ) -> None:
        if self.open_batch is None:
            raise RuntimeError("produce outside a batch")
        self.open_batch.append((topic, key, value, headers))

    def produce_all(
        self, topic: str, keys: Sequence[str], values: Sequence[bytes], headers: h.HeaderList
    ) -> None:
        for key, value in zip(keys, values, strict=True):
            self.produce(topic, key, value, headers)

    def commit(self, offsets: list[TopicPartition], starts: Offsets) -> None:
        batch, self.open_batch = self.open_batch or [], None
        if self.fail_commits > 0:
            self.fail_commits -= 1
            raise RewindBatch("outputs not delivered (in-memory failure)", starts)
        self.records.extend(batch)
        self.commits.append(offsets)

    def drain(self) -> None:
        """Nothing waits: each batch is settled by its commit."""

    def idle(self) -> None:
        """Nothing waits between batches."""

    def recover(self, waited_s: float) -> None:
        """Nothing to settle before reading again."""

    def abandon(self) -> None:
        self.open_batch = None

    def close(self) -> None:
        """Nothing to flush."""

    def on(self, topic: str) -> list[tuple[bytes | str | None, bytes | None, h.HeaderList]]:
        """The committed records of one topic: (key, value, headers)."""
        return [(k, v, hs) for t, k, v, hs in self.records if t == topic]
