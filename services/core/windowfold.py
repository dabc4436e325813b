"""A batch of events folded into window buckets at once: which events count, and what each
bucket gains, with numpy over the whole batch and Python work only per bucket, never per event.

The rules are those of one event at a time, in stream order (services.features.stats):
an event is replayed when its bucket already folded in a later or equal offset of the same
partition; it is late when its bucket is older than the newest bucket its series had seen
before it, minus the allowed lateness. Both depend only on the order of a series' events, so
any batching gives the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from driftline.services.core.windows import (
    CONFIDENCE_BINS,
    MICRO,
    clean_confidence,
    confidence_bins,
)

INT64_MIN = -(2**63)

IntArray = npt.NDArray[np.int64]
Index = npt.NDArray[np.intp]
Starts = npt.NDArray[Any]  # bucket starts: int64, or Python ints (object) for absurd times


@dataclass(frozen=True)
class BucketGroups:
    """The distinct (series, bucket) pairs of a batch, in the order of their first event.

    `group[i]` is event i's pair; `series[g]` and `start[g]` say what pair g is.
    """

    group: Index
    series: list[int]
    start: list[int]
    rank: Index  # each event's bucket among the batch's distinct buckets (ascending)
    starts: Starts  # those distinct buckets

    def __len__(self) -> int:
        return len(self.series)


def bucket_starts(
    event_time_ms: IntArray, bucket_ms: int, margin: int = 0, *, wide: bool = False
) -> Starts:
    """The start of each event's bucket (floor to a multiple of bucket_ms, as Python's %).

    int64 unless `wide` or an event time lies so close to the smallest int64 that a bucket
    start, or it less `margin`, would not fit: then Python ints (exact, slower), never a
    wrapped value.
    """
    t = np.asarray(event_time_ms, dtype=np.int64)
    if wide or (len(t) and int(t.min()) < INT64_MIN + bucket_ms + margin):
        exact = t.astype(object)
        return np.asarray(exact - exact % bucket_ms, dtype=object)
    out: npt.NDArray[np.int64] = t - t % bucket_ms
    return out


def group_buckets(series: Index, starts: Starts) -> BucketGroups:
    """Number the (series, bucket) pairs of a batch in the order their first event comes."""
    distinct, rank = np.unique(starts, return_inverse=True)
    rank = rank.astype(np.intp).ravel()
    width = max(len(distinct), 1)
    key = series.astype(np.int64) * width + rank
    keys, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    renumber = np.empty(len(keys), dtype=np.intp)
    renumber[order] = np.arange(len(keys), dtype=np.intp)
    keys = keys[order]
    return BucketGroups(
        group=renumber[inverse.ravel()],
        series=(keys // width).tolist(),
        start=distinct[keys % width].tolist(),
        rank=rank,
        starts=distinct,
    )


@dataclass(frozen=True)
class Admission:
    """The batch's bucket pairs and which of its events count (the others are late or
    replayed, never both)."""

    groups: BucketGroups
    accepted: npt.NDArray[np.bool_]
    late: npt.NDArray[np.bool_]
    replayed: npt.NDArray[np.bool_]


SeenOf = Callable[[int, int], "tuple[int, int] | None"]


def admit(
    series: Index,
    event_time_ms: IntArray,
    partitions: IntArray,
    offsets: IntArray,
    *,
    bucket_ms: int,
    lateness_ms: int,
    newest: Sequence[int | None],
    seen: SeenOf,
) -> Admission:
    """Which events of a batch count, by the rules of one event at a time in stream order.

    `series[i]` numbers event i's series; `newest[s]` is series s's newest bucket before the
    batch (None: none yet); `seen(s, start)` the (partition, offset) that series s's bucket
    at `start` last folded in before the batch (None: not held).

    The newest bucket a series had seen before event i is the largest of `newest` and the
    buckets of the series' earlier events in the batch, whether they counted or not: a late
    event's bucket is older than that newest anyway, and a replayed one's bucket is held, so
    no newer than `newest`. So a running maximum per series decides lateness.
    """
    n = len(series)
    # A series' newest bucket itself out of int64's reach (an absurd event time) widens too.
    wide = any(v is not None and v < INT64_MIN + lateness_ms for v in newest)
    starts = bucket_starts(event_time_ms, bucket_ms, lateness_ms, wide=wide)
    groups = group_buckets(series, starts)
    held = [seen(s, b) for s, b in zip(groups.series, groups.start, strict=True)]
    has_seen = np.fromiter((h is not None for h in held), dtype=bool, count=len(held))
    seen_part = np.fromiter((h[0] if h else -1 for h in held), dtype=np.int64, count=len(held))
    seen_off = np.fromiter((h[1] if h else -1 for h in held), dtype=np.int64, count=len(held))
    g = groups.group
    replayed = has_seen[g] & (partitions == seen_part[g]) & (offsets <= seen_off[g])
    # Running maximum of the bucket rank within each series, in stream order: sort by series
    # (stably), and lift each series' ranks above every earlier series' ranks.
    width = max(len(groups.starts), 1)
    by_series = np.argsort(series, kind="stable")
    base = series[by_series].astype(np.int64) * width
    top_rank = np.empty(n, dtype=np.intp)
    top_rank[by_series] = np.maximum.accumulate(base + groups.rank[by_series]) - base
    smallest = groups.starts[0] if n else 0
    before = np.asarray([smallest if v is None else v for v in newest], dtype=starts.dtype)
    top = np.maximum(groups.starts[top_rank], before[series]) if n else starts
    late = ~replayed & (starts < top - lateness_ms)
    return Admission(groups=groups, accepted=~replayed & ~late, late=late, replayed=replayed)


@dataclass(frozen=True)
class BucketSums:
    """What the counted events add to each bucket pair: counts, sums and histograms."""

    count: list[int]
    sum_micro: list[int]
    low: list[int]
    first_ms: list[int]
    last_ms: list[int]
    hist: npt.NDArray[np.int64]  # [groups, CONFIDENCE_BINS]
    classes: npt.NDArray[np.int64]  # [groups, classes]: events per predicted class
    first_event: list[int]  # the group's first counted event (-1: none)
    last_event: list[int]  # its last counted event (-1: none)


def bucket_sums(
    group: Index,
    n_groups: int,
    confidence: npt.ArrayLike,
    event_time_ms: Starts,
    predicted: Index,
    n_classes: int,
    low_threshold: float,
) -> BucketSums:
    """Sum the events (one group each) into their groups; non-finite confidences read 0.

    Confidences count in whole millionths, so every sum is an exact integer (float64 sums of
    integers stay exact below 2**53, far above a bucket's millionths).
    """
    conf = clean_confidence(confidence)
    count = np.bincount(group, minlength=n_groups)
    micro = np.bincount(group, weights=np.rint(conf * MICRO), minlength=n_groups)
    low = np.bincount(group, weights=(conf < low_threshold), minlength=n_groups)
    hist = np.bincount(
        group * CONFIDENCE_BINS + confidence_bins(conf), minlength=n_groups * CONFIDENCE_BINS
    ).reshape(n_groups, CONFIDENCE_BINS)
    classes = np.bincount(group * n_classes + predicted, minlength=n_groups * n_classes).reshape(
        n_groups, n_classes
    )
    times = np.asarray(event_time_ms)
    first = np.full(n_groups, 0, dtype=times.dtype)
    last = np.full(n_groups, 0, dtype=times.dtype)
    first_event = np.full(n_groups, -1, dtype=np.intp)
    last_event = np.full(n_groups, -1, dtype=np.intp)
    if len(group):
        order = np.argsort(group, kind="stable")  # each group's events in stream order
        ordered = group[order]
        heads = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        tails = np.r_[heads[1:], len(ordered)] - 1
        present = ordered[heads]
        first[present] = np.minimum.reduceat(times[order], heads)
        last[present] = np.maximum.reduceat(times[order], heads)
        first_event[present] = order[heads]
        last_event[present] = order[tails]
    return BucketSums(
        count=count.tolist(),
        sum_micro=micro.astype(np.int64).tolist(),
        low=low.astype(np.int64).tolist(),
        first_ms=first.tolist(),
        last_ms=last.tolist(),
        hist=hist,
        classes=classes,
        first_event=first_event.tolist(),
        last_event=last_event.tolist(),
    )
