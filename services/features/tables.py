"""Keyed state with a changelog: the port the aggregators and the join write through.

Every change goes through a `StateTable`. In the app that is a faust table: on the RocksDB
store (the default) `services.features.rocks.DiskTable`, on `memory://` FaustTable here; each
change also goes to the table's changelog topic, which is how a restarted worker gets its state
back. In tests and in `rebuild` it is a plain dict (DictTable).

The statistics and accuracy keep their decoded state in memory (bounded by their windows) and
use the table for recovery; the join keeps its per-event state only in the tables and reads
them (`get`, `scan` over an ordered key range), so on disk its memory does not grow with them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, Protocol

from aiokafka.partitioner import murmur2
from typing_extensions import override

Item = tuple[bytes, bytes]
KEY_SEP = b"\x1f"  # composite keys: the part before the first separator picks the partition


@functools.lru_cache(maxsize=16_384)  # keys are asset ids; murmur2 is Python here
def key_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition of a key (murmur2), as producers compute it."""
    slot: int = (murmur2(key) & 0x7FFFFFFF) % partitions
    return slot


class StateTable(Protocol):
    """bytes -> bytes state; `partition` is the changelog partition (None: by key hash)."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, partition: int | None, key: bytes, value: bytes) -> None: ...

    def delete(self, partition: int | None, key: bytes) -> None: ...

    def items(self) -> Iterator[tuple[bytes, bytes]]: ...

    def scan(self, start: bytes, stop: bytes, *, reverse: bool = False) -> Iterator[Item]:
        """Items with start <= key < stop, in byte order of the keys (descending: reverse).

        Writes made while iterating may or may not be seen; deleting what was yielded is safe.
        """
        ...

    def partition(self, key: bytes) -> int | None:
        """The changelog partition a recovered key came from, when known."""
        ...

    def __len__(self) -> int: ...


class DictTable(StateTable):
    """The in-memory twin: the same contract without a changelog."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    @override
    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    @override
    def put(self, partition: int | None, key: bytes, value: bytes) -> None:
        self.data[key] = value

    @override
    def delete(self, partition: int | None, key: bytes) -> None:
        self.data.pop(key, None)

    @override
    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self.data.items()))

    @override
    def scan(self, start: bytes, stop: bytes, *, reverse: bool = False) -> Iterator[Item]:
        return _scan(self.data, start, stop, reverse)

    @override
    def partition(self, key: bytes) -> int | None:
        return None

    @override
    def __len__(self) -> int:
        return len(self.data)


class FaustTable:
    """A faust table (raw bytes keys and values) behind the StateTable port.

    Writes go to the table's store and its changelog with an explicit partition: the stats
    table is co-partitioned with inference.results (the partition the asset's events come
    from), the join tables with the join topic (the asset's partition there), so a worker that
    takes over a partition restores exactly the state of that partition. With partition None
    the key's hash picks it; of a composite key (`asset \x1f event id`), only its first part's.
    The partition of every key written is recorded as the memory store records recovered ones,
    so faust drops the keys of partitions this worker no longer holds after a rebalance.
    """

    def __init__(self, table: Any, partitions: int | None = None) -> None:
        self.table = table
        self.partitions = partitions or getattr(table, "partitions", None)

    def _changelog_partition(self, partition: int | None, key: bytes) -> int | None:
        # "By key hash" is computed here, as Kafka's default partitioner does, rather than left
        # to the producer: right after the changelog topic is created the producer may not have
        # its metadata yet, and it would fail the write instead of waiting for it.
        if partition is not None or not self.partitions:
            return partition
        return key_partition(key.split(KEY_SEP, 1)[0], self.partitions)

    def _known(self) -> Any:
        return getattr(self.table.data, "_key_partition", None)

    def get(self, key: bytes) -> bytes | None:
        value = self.table.data.get(key)
        return value if isinstance(value, bytes) else None

    def put(self, partition: int | None, key: bytes, value: bytes) -> None:
        self.table.data[key] = value
        slot = self._changelog_partition(partition, key)
        known = self._known()
        if known is not None and slot is not None:
            known[key] = slot
        self.table.send_changelog(slot, key, value)

    def delete(self, partition: int | None, key: bytes) -> None:
        if self.table.data.pop(key, None) is not None:
            known = self._known()
            if known is not None:
                known.pop(key, None)
            self.table.send_changelog(
                self._changelog_partition(partition, key), key, None, value_serializer="raw"
            )

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self.table.data.items()))

    def scan(self, start: bytes, stop: bytes, *, reverse: bool = False) -> Iterator[Item]:
        return _scan(self.table.data, start, stop, reverse)

    def partition(self, key: bytes) -> int | None:
        # The memory store records the changelog partition of every key it recovered.
        known = self._known()
        found = known.get(key) if known is not None else None
        return found if isinstance(found, int) else None

    def __len__(self) -> int:
        return len(self.table.data)


def _scan(data: Any, start: bytes, stop: bytes, reverse: bool) -> Iterator[Item]:
    """An ordered range of a dict-like store: sorts its keys (the in-memory stores are small;
    a large state belongs on disk, where a range is a seek)."""
    keys = sorted((k for k in data if start <= k < stop), reverse=reverse)
    return iter([(k, data[k]) for k in keys])
