"""Folding whole batches makes the decisions and sums of one event at a time in stream order."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.schemas.avro import encode_record
from driftline.schemas.result_batch import ResultDecoder
from driftline.services.core.windows import ConfidenceStats, WindowSpec
from driftline.services.features.stats import StatsAggregator, StatsConfig
from driftline.services.features.tables import DictTable

CLASSES = ["healthy", "contaminated", "cracked", "flashover"]
SPEC = WindowSpec(bucket_ms=1000, hopping_ms=4000, hop_ms=1000)
BASE = 1_700_000_000_000
INT64_MIN = -(2**63)

Series = tuple[str, str, int]


@dataclass
class Event:
    asset: str
    version: int
    t_ms: int
    confidence: float
    predicted: str
    classes: list[str]
    partition: int
    offset: int

    def value(self) -> bytes:
        return encode_record(
            "InferenceResult",
            {
                "schema_version": 1,
                "event_id": f"e-{self.partition}-{self.offset}",
                "asset_id": self.asset,
                "modality": "sensor",
                "model_name": "m",
                "model_version": self.version,
                "classes": self.classes,
                "probabilities": b"",
                "predicted_class": self.predicted,
                "confidence": self.confidence,
                "event_time_ms": self.t_ms,
                "scored_time_ms": 0,
            },
        )


@dataclass
class OneAtATime:
    """The rule as the features worker first applied it, event by event (the oracle): an
    event is replayed by the offsets its bucket held before the batch, late by its series'
    newest bucket before it."""

    lateness_ms: int
    buckets: dict[tuple[Series, int], ConfidenceStats] = field(default_factory=dict)
    offsets: dict[tuple[Series, int], tuple[int, int]] = field(default_factory=dict)
    newest: dict[Series, int] = field(default_factory=dict)
    partition_of: dict[Series, int] = field(default_factory=dict)
    late: int = 0
    replayed: int = 0

    def add(self, batch: list[tuple[Event, float]]) -> None:
        groups: dict[tuple[Series, int], list[tuple[Event, float]]] = {}
        for ev, confidence in batch:
            series = (ev.asset, "m", ev.version)
            bucket = SPEC.bucket_of(ev.t_ms)
            seen = self.offsets.get((series, bucket))
            if seen is not None and seen[0] == ev.partition and ev.offset <= seen[1]:
                self.replayed += 1
                continue
            top = self.newest.get(series)
            if top is not None and bucket < top - self.lateness_ms:
                self.late += 1
                continue
            if top is None or bucket > top:
                self.newest[series] = bucket
            groups.setdefault((series, bucket), []).append((ev, confidence))
            self.partition_of[series] = ev.partition
        for key, folded in groups.items():  # a bucket's class list is its first event's
            stats = self.buckets.setdefault(key, ConfidenceStats())
            stats.add(
                [c for _, c in folded],
                [ev.predicted for ev, _ in folded],
                [ev.t_ms for ev, _ in folded],
                0.6,
                known_classes=folded[0][0].classes,
            )
            self.offsets[key] = (folded[-1][0].partition, folded[-1][0].offset)


times = st.one_of(
    st.integers(BASE - 8000, BASE + 8000),
    st.integers(INT64_MIN, INT64_MIN + 5000),  # absurd, but a bucket must not wrap around
)


@settings(max_examples=120, deadline=None)
@given(
    stream=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from([1, 2]),
            times,
            st.floats(width=32, allow_nan=True),
            st.sampled_from([*CLASSES, "other"]),
            st.sampled_from([CLASSES, CLASSES[:2]]),
            st.integers(0, 1),
        ),
        max_size=60,
    ),
    cuts=st.lists(st.integers(0, 60), max_size=6),
    redelivered=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 20)), max_size=3),
    lateness_ms=st.sampled_from([0, 1000, 3000]),
)
def test_whole_batches_decide_and_sum_as_one_event_at_a_time(
    stream: list[tuple[str, int, int, float, str, list[str], int]],
    cuts: list[int],
    redelivered: list[tuple[int, int]],
    lateness_ms: int,
) -> None:
    counters = [0, 0]
    events = []
    for asset, version, t, conf, predicted, classes, partition in stream:
        events.append(
            Event(asset, version, t, conf, predicted, classes, partition, counters[partition])
        )
        counters[partition] += 1
    # Kafka redelivers from an older offset after a crash: a stretch of the stream again.
    delivered = list(events)
    for where, length in redelivered:
        at = min(where, len(delivered))
        delivered[at:at] = events[max(0, at - length) : at]
    oracle = OneAtATime(lateness_ms)
    values = [ev.value() for ev in delivered]
    conf = ResultDecoder().decode(values, [None] * len(values)).confidence.tolist()
    config = StatsConfig(SPEC, 0.6, lateness_ms, "p:", 10**9, 10**9)
    table = DictTable()
    agg = StatsAggregator(config, table)
    late = replayed = accepted = 0
    bounds = sorted({0, len(delivered), *(c for c in cuts if c <= len(delivered))})
    for lo, hi in itertools.pairwise(bounds):
        # the float32 confidence as read from the wire
        oracle.add(list(zip(delivered[lo:hi], conf[lo:hi], strict=True)))
        batch = ResultDecoder().decode(values[lo:hi], [None] * (hi - lo))
        part = np.asarray([ev.partition for ev in delivered[lo:hi]], dtype=np.int64)
        off = np.asarray([ev.offset for ev in delivered[lo:hi]], dtype=np.int64)
        report = agg.add(batch, part, off)
        late, replayed, accepted = (
            late + report.late,
            replayed + report.replayed,
            accepted + report.accepted,
        )
    assert (late, replayed) == (oracle.late, oracle.replayed)
    assert accepted == sum(s.count for s in oracle.buckets.values())
    held = {(series, b): s for series, bs in agg.buckets.items() for b, s in bs.items()}
    assert {k: s.to_bytes() for k, s in held.items()} == {
        k: s.to_bytes() for k, s in oracle.buckets.items()
    }
    assert agg.offsets == oracle.offsets
    assert agg.newest == oracle.newest
    assert agg.partition_of == oracle.partition_of
    assert set(agg.dirty) == set(oracle.buckets)
    assert len(table) == len(oracle.buckets)
