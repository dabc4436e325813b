"""faustfix's gap bookkeeping, on faust's own consumer class and interval trees."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from intervaltree import IntervalTree

from driftline.services.features import faustfix


def consumer(committed: int | None) -> Any:
    from faust.transport import consumer as faust_consumer

    faustfix.install()
    me = SimpleNamespace(_committed_offset={"tp": committed}, _gap=defaultdict(IntervalTree))
    me.add_gap = faust_consumer.Consumer._add_gap.__get__(me)
    return me


def spans(tree: IntervalTree) -> list[tuple[int, int]]:
    return sorted((i.begin, i.end) for i in tree)


def test_gaps_are_exactly_the_offsets_never_delivered() -> None:
    me = consumer(committed=10)
    # Read 12 after 10 (11 was a marker), 15 after 12, 20 after 16.
    for start, end in ((11, 12), (13, 15), (17, 20)):
        asyncio.run(me.add_gap("tp", start, end))
    assert spans(me._gap["tp"]) == [(11, 12), (13, 15), (17, 20)]


def test_a_gap_from_before_the_committed_offset_starts_at_it() -> None:
    me = consumer(committed=10)
    asyncio.run(me.add_gap("tp", 5, 12))  # faust reads the committed offset as processed
    assert spans(me._gap["tp"]) == [(10, 12)]
    asyncio.run(me.add_gap("tp", 3, 9))  # wholly before the committed offset: no gap
    assert spans(me._gap["tp"]) == [(10, 12)]


def test_gaps_seen_again_after_a_seek_are_merged_not_doubled() -> None:
    me = consumer(committed=None)
    for start, end in ((11, 12), (13, 15)):
        asyncio.run(me.add_gap("tp", start, end))
    # The partition was read again from 10: the same gaps come again, one wider.
    for start, end in ((11, 12), (13, 16)):
        asyncio.run(me.add_gap("tp", start, end))
    assert spans(me._gap["tp"]) == [(11, 12), (13, 16)]
    offsets = [o for b, e in spans(me._gap["tp"]) for o in range(b, e)]
    assert len(offsets) == len(set(offsets))
