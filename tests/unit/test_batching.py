"""The batch closes at max size or max wait from its first item, whichever comes first."""

from __future__ import annotations

import itertools

import pytest

from driftline.services.core.batching import Batcher, BatchPolicy, ChunkPolicy


def test_closes_at_max_size() -> None:
    b: Batcher[int] = Batcher(BatchPolicy(max_size=4, max_wait_s=1.0))
    b.add([1, 2, 3], now=0.0)
    assert not b.ready(0.0)
    assert b.room() == 1
    b.add([4], now=0.001)
    assert b.ready(0.001)
    assert b.take() == [1, 2, 3, 4]
    assert len(b) == 0
    assert not b.ready(5.0)


def test_closes_at_max_wait_counted_from_the_first_item() -> None:
    b: Batcher[int] = Batcher(BatchPolicy(max_size=100, max_wait_s=0.02))
    assert b.wait_s(now=10.0, idle_wait_s=0.5) == 0.5
    b.add([1], now=10.0)
    assert b.wait_s(now=10.005, idle_wait_s=0.5) == pytest.approx(0.015)
    b.add([2], now=10.015)
    assert not b.ready(10.019)
    assert b.ready(10.02)
    assert b.wait_s(now=10.5, idle_wait_s=0.5) == 0.0
    assert b.take() == [1, 2]


def test_empty_adds_do_not_open_a_batch() -> None:
    b: Batcher[int] = Batcher(BatchPolicy(max_size=2, max_wait_s=0.0))
    b.add([], now=1.0)
    assert not b.ready(2.0)
    b.add([7], now=3.0)
    assert b.ready(3.0), "max_wait 0 means: score whatever arrived"


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="max_size"):
        BatchPolicy(max_size=0, max_wait_s=0.1)


def test_discard_drops_items_and_resets_the_clock_when_empty() -> None:
    b: Batcher[tuple[str, int]] = Batcher(BatchPolicy(max_size=10, max_wait_s=1.0))
    b.add([("p0", 1), ("p1", 2), ("p0", 3)], now=0.0)
    assert b.discard(lambda item: item[0] == "p0") == 2
    assert b.take() == [("p1", 2)]
    b.add([("p2", 1)], now=5.0)
    assert b.discard(lambda _item: True) == 1
    assert not b.ready(100.0)
    assert b.wait_s(now=100.0, idle_wait_s=0.3) == 0.3


def test_a_batch_is_cut_into_consecutive_chunks_of_near_equal_size() -> None:
    policy = ChunkPolicy(min_chunk=8, max_chunks=4)
    assert policy.spans(15) == [(0, 15)]  # under two chunks' worth: whole
    assert policy.spans(16) == [(0, 8), (8, 16)]
    assert policy.spans(64) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert policy.spans(62) == [(0, 15), (15, 30), (30, 46), (46, 62)]  # the smaller first
    for n in range(1, 300):
        spans = policy.spans(n)
        assert spans[0][0] == 0
        assert spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        sizes = [end - start for start, end in spans]
        assert max(sizes) - min(sizes) <= 1
        assert len(spans) <= 4
    assert ChunkPolicy().spans(512) == [(0, 512)]
    with pytest.raises(ValueError, match="at least 1"):
        ChunkPolicy(min_chunk=0)
