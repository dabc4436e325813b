"""The accuracy book: state per version and join partition, changelog, shared Redis hashes."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import numpy as np
from prometheus_client import CollectorRegistry

from driftline.services.features.accuracy import (
    AccuracyBook,
    AccuracyView,
    bucket_hash_key,
    bucket_starts,
    join_partition,
    parse_bucket_key,
)
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.store import ACCURACY_KEY, MemoryFeatureStore
from driftline.services.features.tables import DictTable

SEC = 1000
BUCKET = 10 * SEC
T0 = 1_700_000_000_000
V1 = ("insulator-sensor", 1)
PARTITIONS = 4


class PartitionedTable(DictTable):
    """A DictTable that remembers the changelog partition every key was written at."""

    def __init__(self) -> None:
        super().__init__()
        self.partitions: dict[bytes, set[int | None]] = defaultdict(set)

    def put(self, partition: int | None, key: bytes, value: bytes) -> None:
        self.partitions[key].add(partition)
        super().put(partition, key, value)


def _book(table: DictTable | None = None, **kw: object) -> AccuracyBook:
    table = table if table is not None else DictTable()
    return AccuracyBook(table, BUCKET, 600 * SEC, 30, **kw)  # type: ignore[arg-type]


def _feed(books: dict[int, AccuracyBook], n: int, seed: int) -> None:
    """Events of one version, each fed to the book owning its partition."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        key = f"e{i}".encode()
        p = join_partition(key, PARTITIONS)
        book = books.get(p)
        if book is None:
            continue
        t = T0 + int(rng.integers(0, 120 * SEC))
        book.scored(V1, t, float(rng.uniform(0.4, 1.0)), p)
        if rng.random() < 0.5:
            book.labelled(V1, t, t + int(rng.integers(0, 20 * SEC)), bool(rng.random() < 0.7), p)


async def _read(store: MemoryFeatureStore, prefix: str) -> AccuracyView:
    index = await store.read(ACCURACY_KEY.format(prefix=prefix, model=V1[0], version=V1[1]))
    buckets = {
        s: await store.read(bucket_hash_key(prefix, V1, BUCKET, s))
        for s in bucket_starts(index, 100)
    }
    return AccuracyView.read(index, buckets)


def test_state_goes_to_the_changelog_at_the_events_partition_only() -> None:
    table = PartitionedTable()
    book = _book(table)
    _feed(dict.fromkeys(range(PARTITIONS), book), 500, seed=1)
    assert table.partitions
    for key, seen in table.partitions.items():
        _, partition, bucket_ms, _ = parse_bucket_key(key)
        assert seen == {partition}, "one changelog partition per key"
        assert bucket_ms == BUCKET
    assert {p for _, p in book.states} == set(range(PARTITIONS))


def test_two_workers_in_redis_read_back_as_one_worker_over_all_partitions() -> None:
    one = _book()
    _feed(dict.fromkeys(range(PARTITIONS), one), 1500, seed=2)
    a, b = _book(), _book()
    _feed({0: a, 1: a, 2: b, 3: b}, 1500, seed=2)

    async def flush_both() -> tuple[AccuracyView, AccuracyView]:
        shared, alone = MemoryFeatureStore(), MemoryFeatureStore()
        for book, store in ((a, shared), (b, shared), (one, alone)):
            writes, snap = book.pending("p:", 60_000)
            await store.write(writes)
            book.settle(snap)
        return await _read(shared, "p:"), await _read(alone, "p:")

    summed, single = asyncio.run(flush_both())
    assert summed.buckets == single.buckets == one.buckets(V1)
    assert summed.snapshot() == one.snapshot(V1)
    assert not a.dirty
    assert not b.dirty


def test_rewriting_and_stale_writes_leave_redis_unchanged() -> None:
    book = _book()
    _feed(dict.fromkeys(range(PARTITIONS), book), 600, seed=3)

    async def scenario() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        store = MemoryFeatureStore()
        stale, _ = book.pending("p:", 60_000)
        _feed(dict.fromkeys(range(PARTITIONS), book), 200, seed=4)  # more events since
        book.mark_all_dirty()
        fresh, _ = book.pending("p:", 60_000)
        await store.write(fresh)
        first = {k: dict(v) for k, v in store.hashes.items()}
        await store.write(fresh)  # a retry: the same
        await store.write(stale)  # an older flush arriving late: ignored
        return first, store.hashes

    first, after = asyncio.run(scenario())
    assert after == first


def test_restore_from_the_table_gives_the_same_snapshot() -> None:
    table = DictTable()
    book = _book(table)
    _feed(dict.fromkeys(range(PARTITIONS), book), 1000, seed=5)
    again = _book(table)
    again.restore()
    assert again.buckets(V1) == book.buckets(V1)
    assert again.snapshot(V1) == book.snapshot(V1)
    writes, _ = again.pending("p:", 60_000)
    assert len(writes) == sum(len(s.buckets) for s in book.states.values()) + len(book.states)
    other = AccuracyBook(table, 2 * BUCKET, 600 * SEC)  # a new bucket size starts afresh
    other.restore()
    assert not other.states
    assert not len(table)


def test_buckets_past_the_horizon_leave_the_table() -> None:
    table = DictTable()
    book = AccuracyBook(table, BUCKET, 3 * BUCKET)
    book.scored(V1, T0, 0.9, 0)
    book.scored(V1, T0, 0.9, 1)
    book.scored(V1, T0 + 10 * BUCKET, 0.9, 0)
    starts = sorted(parse_bucket_key(k)[1:] for k in table.data)
    assert starts == [(0, BUCKET, T0 + 10 * BUCKET - T0 % BUCKET), (1, BUCKET, T0 - T0 % BUCKET)]


def test_counters_add_up_and_the_estimate_comes_before_any_label() -> None:
    metrics = FeaturesMetrics(CollectorRegistry())
    book = _book(metrics=metrics, calibration=lambda _v: 0.5)
    book.scored(V1, T0, 0.8, 0)
    book.scored(V1, T0 + 1, 0.6, 1)
    assert book.snapshot(V1) is None
    assert book.estimate(V1) == (0.35, T0 - T0 % BUCKET)
    book.labelled(V1, T0, T0 + 4 * SEC, False, 0)
    assert metrics.accuracy_scored.labels(*V1[:1], "1")._value.get() == 2
    assert metrics.accuracy_labelled.labels(V1[0], "1", "wrong")._value.get() == 1
    assert metrics.accuracy_confidence.labels(V1[0], "1")._value.get() == 1.4
