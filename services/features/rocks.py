"""State on disk: RocksDB (rocksdict) databases behind the StateTable port, memory bounded.

A faust `rocksdb://` table keeps one RocksDB database per changelog partition. `DiskTable`
reads and writes those databases directly (faust's own setter needs the agent's current event;
the pipeline writes from batches and timers) and sends every change to the table's changelog
with an explicit partition, as FaustTable does for the memory store, so recovery puts each key
back into the database of its partition. It holds no per-key Python state: a read goes to the
database, `items` and `scan` are lazy iterators over the partitions' databases.

The same class over databases in a local directory (`LocalDatabases`, no changelog) is the
in-process twin the late-label bench and the tests use.

Memory: every database of a worker shares one block cache (`RocksOptions`), which also holds
the index and filter blocks and is charged with the memtables (a WriteBufferManager), so the
resident memory of the tables stays within `table_memory_mb` however many keys are on disk.
"""

from __future__ import annotations

import contextlib
import heapq
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import rocksdict

from driftline.services.features.tables import KEY_SEP, Item, key_partition

MIB = 1 << 20
OFFSET_KEY = b"__faust\x00offset__"  # faust's per-database changelog offset: not state

Changelog = Callable[[int, bytes, bytes | None], None]


class RocksOptions:
    """How a worker opens its RocksDB databases: one shared, bounded cache for all of them.

    faust's RocksDB store opens its databases through `open` (it is the store's
    `rocksdb_options`), as does LocalDatabases.
    """

    def __init__(self, memory_bytes: int = 64 * MIB) -> None:
        self.memory_bytes = memory_bytes
        self.cache = rocksdict.Cache(memory_bytes)
        # Memtables are charged to the cache; a flush starts when together they pass half.
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            memory_bytes // 2, False, self.cache
        )

    def options(self) -> rocksdict.Options:
        o = rocksdict.Options(raw_mode=True)
        o.create_if_missing(True)
        o.set_write_buffer_size(max(256 * 1024, min(4 * MIB, self.memory_bytes // 16)))
        o.set_max_write_buffer_number(2)
        o.set_write_buffer_manager(self.write_buffers)
        o.set_max_total_wal_size(32 * MIB)
        o.set_max_open_files(256)
        o.set_max_background_jobs(2)
        o.set_compression_type(rocksdict.DBCompressionType.lz4())
        o.set_keep_log_file_num(2)
        o.set_max_log_file_size(MIB)
        # Eviction deletes the oldest keys in runs: files that are mostly tombstones are
        # compacted soon, so scans from the start of the time index stay short.
        o.add_compact_on_deletion_collector_factory(4096, 2048, 0.5)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_cache_index_and_filter_blocks(True)  # else they grow with the data, off-cache
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_bloom_filter(10, False)  # misses (a new event's key) rarely touch a block
        o.set_block_based_table_factory(table)
        return o

    def open(self, path: Path | str, *, read_only: bool = False) -> rocksdict.Rdict:  # noqa: ARG002
        # read_only is part of faust's interface (faust passes it by name: RocksDBOptions.open
        # is duck-typed, there is no base to mark an override of); the join's databases are
        # always written.
        return rocksdict.Rdict(
            str(path), options=self.options(), access_type=rocksdict.AccessType.read_write()
        )

    def usage_bytes(self) -> int:
        """What the shared cache holds now (blocks, index and filters, memtables)."""
        return int(self.cache.get_usage())


class Databases(Protocol):
    """A table's per-partition databases."""

    def held(self) -> Mapping[int, Any]:
        """The databases of the partitions this worker holds now."""
        ...

    def db(self, partition: int) -> Any:
        """The database of a partition, opened if it is not yet."""
        ...


class LocalDatabases:
    """Per-partition databases in a directory of our own (the bench, tests)."""

    def __init__(self, path: Path, options: RocksOptions) -> None:
        self.path = Path(path)
        self.options = options
        self._dbs: dict[int, rocksdict.Rdict] = {}
        self.path.mkdir(parents=True, exist_ok=True)
        for child in sorted(self.path.glob("p*.db")):  # reopen what an earlier run left
            self.db(int(child.name[1:-3]))

    def held(self) -> Mapping[int, Any]:
        return self._dbs

    def db(self, partition: int) -> Any:
        db = self._dbs.get(partition)
        if db is None:
            db = self._dbs[partition] = self.options.open(self.path / f"p{partition}.db")
        return db

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()


class FaustDatabases:
    """The databases of a faust RocksDB store (faust opens them at assignment and recovery)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def held(self) -> Mapping[int, Any]:
        return dict(self.store._dbs)  # a copy: a rebalance may change the store's dict

    def db(self, partition: int) -> Any:
        return self.store._db_for_partition(partition)


class DiskTable:
    """A StateTable whose keys and values live in per-partition RocksDB databases.

    A key lives in one partition: it is always written with the same one. `partition_of`
    says which when the caller does not (the join's tables: the key's asset); without it a key
    is looked for in every database held, and written by the hash of its first part, as
    FaustTable writes.
    """

    def __init__(
        self,
        dbs: Databases,
        partitions: int,
        *,
        changelog: Changelog | None = None,
        partition_of: Callable[[bytes], int] | None = None,
    ) -> None:
        self.dbs = dbs
        self.partitions = partitions
        self.changelog = changelog
        self.partition_of = partition_of
        self._holding = 0
        self._held: dict[tuple[int, bytes], bytes | None] = {}

    @contextlib.contextmanager
    def holding_changelog(self) -> Iterator[None]:
        """Within it, changelog records wait and only a key's last value is sent, when the
        outermost hold ends. A batch writes an event's state on its input, again on its
        result, and an accuracy bucket at every result: each changelog record costs the
        worker a faust and aiokafka send (about a hundred microseconds), and only the last
        value of a key is ever read back. The databases are written at once; a crash before
        the hold ends loses only what the batch's replay writes again."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding:
                self.release_changelog()

    def release_changelog(self) -> None:
        held, self._held = self._held, {}
        if self.changelog is not None:
            for (slot, key), value in held.items():
                self.changelog(slot, key, value)

    def _log(self, slot: int, key: bytes, value: bytes | None) -> None:
        if self.changelog is None:
            return
        if self._holding:
            self._held[(slot, key)] = value
        else:
            self.changelog(slot, key, value)

    def _slot(self, partition: int | None, key: bytes) -> int:
        if partition is not None:
            return partition
        if self.partition_of is not None:
            return self.partition_of(key)
        return key_partition(key.split(KEY_SEP, 1)[0], self.partitions)

    def _holder(self, partition: int | None, key: bytes) -> tuple[int, Any] | None:
        """The partition and database holding a key, if any."""
        held = self.dbs.held()
        if partition is None and self.partition_of is not None:
            partition = self.partition_of(key)
        if partition is not None:
            db = held.get(partition)
            return (partition, db) if db is not None and db.get(key) is not None else None
        for slot, db in held.items():
            if db.get(key) is not None:
                return slot, db
        return None

    def get(self, key: bytes) -> bytes | None:
        held = self.dbs.held()
        if self.partition_of is not None:
            db = held.get(self.partition_of(key))
            dbs = [db] if db is not None else []
        else:
            dbs = list(held.values())
        for db in dbs:
            value = db.get(key)
            if isinstance(value, bytes):
                return value
        return None

    def put(self, partition: int | None, key: bytes, value: bytes) -> None:
        slot = self._slot(partition, key)
        self.dbs.db(slot).put(key, value)
        self._log(slot, key, value)

    def delete(self, partition: int | None, key: bytes) -> None:
        found = self._holder(partition, key)
        if found is None:
            return
        slot, db = found
        db.delete(key)
        self._log(slot, key, None)

    def items(self) -> Iterator[Item]:
        for _, db in sorted(self.dbs.held().items()):
            for key, value in db.items():
                if key != OFFSET_KEY:
                    yield key, value

    def scan(self, start: bytes, stop: bytes, *, reverse: bool = False) -> Iterator[Item]:
        """Items with start <= key < stop in key order (all partitions merged), lazily."""
        ranges = [_range(db, start, stop, reverse) for db in self.dbs.held().values()]
        return heapq.merge(*ranges, reverse=reverse)

    def partition(self, key: bytes) -> int | None:
        found = self._holder(None, key)
        return found[0] if found is not None else None

    def __len__(self) -> int:
        """RocksDB's estimate of the keys held (exact only after compaction)."""
        held = self.dbs.held().values()
        return sum(int(db.property_int_value("rocksdb.estimate-num-keys") or 0) for db in held)


def _range(db: Any, start: bytes, stop: bytes, reverse: bool) -> Iterator[Item]:
    bounds = rocksdict.ReadOptions()
    bounds.set_iterate_lower_bound(start)
    bounds.set_iterate_upper_bound(stop)  # the iterator stops there, before any tombstone
    it = db.iter(bounds)
    if reverse:
        it.seek_to_last()
    else:
        it.seek(start)
    while it.valid():
        key = it.key()
        if not start <= key < stop:
            break
        yield key, it.value()
        if reverse:
            it.prev()
        else:
            it.next()


def faust_disk_table(
    table: Any,
    options: RocksOptions,
    *,
    partition_of: Callable[[bytes], int] | None = None,
    logged: bool = True,
) -> DiskTable:
    """The StateTable of a faust table on the RocksDB store, opened with our options.

    Not `logged`: writes stay in the worker's databases and no changelog record is sent, for
    a table rebuilt from the others whenever partitions are recovered (the join's index)."""
    store = table.data
    store.rocksdb_options = options  # faust opens every partition's database through this

    def changelog(partition: int, key: bytes, value: bytes | None) -> None:
        if value is None:
            table.send_changelog(partition, key, None, value_serializer="raw")
        else:
            table.send_changelog(partition, key, value)

    return DiskTable(
        FaustDatabases(store),
        int(table.partitions),
        changelog=changelog if logged else None,
        partition_of=partition_of,
    )


def disk_bytes(path: Path) -> int:
    """Bytes of every file under a directory (databases, WAL, logs)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                continue  # a file RocksDB removed meanwhile
    return total


@contextlib.contextmanager
def holding_changelogs(tables: Iterable[object]) -> Iterator[None]:
    """Hold the changelog records of every disk table among these (holding_changelog)."""
    with contextlib.ExitStack() as stack:
        for table in tables:
            if isinstance(table, DiskTable):
                stack.enter_context(table.holding_changelog())
        yield
