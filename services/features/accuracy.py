"""Live accuracy by event time per model version and join partition: table state, Redis hashes.

State is kept per (model version, join partition, event-time bucket), one changelog entry each,
written at the event's join partition: a join worker owns its partitions, so two workers never
write one changelog key, and a worker that takes a partition over restores exactly its buckets.
Redis gets one hash per (version, bucket) whose fields are per partition ("p3:labelled"), each
partition's fields ordered by their own update count, so workers write side by side and a
reader sums the partitions (`bucket_counts`). Buckets older than the horizon are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from driftline.services.core import accuracy as core
from driftline.services.core.accuracy import AccuracySnapshot, BucketCounts, EventTimeAccuracy
from driftline.services.core.windows import window_start
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.stats import SEP
from driftline.services.features.store import (
    ACCURACY_BUCKET_KEY,
    ACCURACY_KEY,
    PARTITION_FIELD,
    HashWrite,
    num,
    window_name,
)
from driftline.services.features.tables import StateTable, key_partition

Version = tuple[str, int]  # model name, version
Owner = tuple[Version, int]  # (version, join partition)

# The counters of a bucket as Redis fields (each one per partition, "p{n}:{name}").
COUNTER_FIELDS = ("scored", "confidence_micros", "labelled", "correct", "delay_sum_ms")
DELAY_MAX_FIELD = "delay_max_ms"
DELAY_BIN_FIELDS = (*tuple(f"delay_le_{edge}s" for edge in core.DELAY_EDGES_S), "delay_le_inf")
UPDATES_FIELD = "updates"  # orders the writes of one partition's fields
NEWEST_FIELD = "newest_ms"  # index hash: start of the partition's newest bucket


def join_partition(key: bytes, partitions: int) -> int:
    """The join-topic partition of an asset id key, as the join topic and its tables use it."""
    return key_partition(key, partitions)


def bucket_key(version: Version, partition: int, bucket_ms: int, start_ms: int) -> bytes:
    """The changelog key of one bucket: version, partition, bucket size, start."""
    return SEP.join(
        (version[0], str(version[1]), str(partition), str(bucket_ms), str(start_ms))
    ).encode()


def parse_bucket_key(key: bytes) -> tuple[Version, int, int, int]:
    model, number, partition, bucket_ms, start = key.decode().split(SEP)
    return (model, int(number)), int(partition), int(bucket_ms), int(start)


def _field(partition: int, name: str) -> str:
    return PARTITION_FIELD.format(partition=partition, name=name)


def bucket_write(
    prefix: str,
    version: Version,
    partition: int,
    bucket_ms: int,
    start: int,
    counts: BucketCounts,
    ttl_ms: int,
) -> HashWrite:
    """One partition's fields of a bucket hash; more updates win, equal ones rewrite the same."""
    model, number = version
    fields = {
        "model": model,
        "version": str(number),
        "bucket_start_ms": str(start),
        "bucket_ms": str(bucket_ms),
    }
    for name in COUNTER_FIELDS:
        fields[_field(partition, name)] = str(getattr(counts, name))
    fields[_field(partition, DELAY_MAX_FIELD)] = str(counts.delay_max_ms)
    for name, n in zip(DELAY_BIN_FIELDS, counts.delay_counts, strict=True):
        fields[_field(partition, name)] = str(n)
    key = bucket_hash_key(prefix, version, bucket_ms, start)
    return HashWrite(key, ((_field(partition, UPDATES_FIELD), counts.updates),), fields, ttl_ms)


def index_write(
    prefix: str,
    version: Version,
    partition: int,
    state: EventTimeAccuracy,
    calibration: float | None,
    ttl_ms: int,
    min_labels: int | None = None,
) -> HashWrite:
    """The version's index hash: where its buckets are (size, newest start per partition)."""
    model, number = version
    fields = {
        "model": model,
        "version": str(number),
        "bucket_ms": str(state.bucket_ms),
        "horizon_ms": str(state.horizon_ms),
    }
    if calibration is not None:
        fields["calibration"] = num(calibration)
    if min_labels is not None:
        fields["min_labels"] = str(min_labels)
    updates = sum(c.updates for c in state.buckets.values())
    order = (
        (_field(partition, NEWEST_FIELD), state.newest_ms),
        (_field(partition, UPDATES_FIELD), updates),
    )
    return HashWrite(
        ACCURACY_KEY.format(prefix=prefix, model=model, version=number), order, fields, ttl_ms
    )


def bucket_counts(fields: Mapping[str, str]) -> BucketCounts:
    """A bucket hash read back: every partition's fields summed."""
    by_partition: dict[str, BucketCounts] = {}
    for name, value in fields.items():
        if not name.startswith("p") or ":" not in name:
            continue
        part, counter = name.split(":", 1)
        c = by_partition.setdefault(part, BucketCounts())
        if counter in COUNTER_FIELDS:
            setattr(c, counter, int(value))
        elif counter == DELAY_MAX_FIELD:
            c.delay_max_ms = int(value)
        elif counter in DELAY_BIN_FIELDS:
            c.delay_counts[DELAY_BIN_FIELDS.index(counter)] = int(value)
    total = BucketCounts()
    for c in by_partition.values():
        total = total.merged(c)
    return total


def newest_bucket(index: Mapping[str, str]) -> int:
    """The newest bucket start any partition wrote to a version's index hash (-1: none)."""
    starts = [int(v) for k, v in index.items() if k.endswith(":" + NEWEST_FIELD)]
    return max(starts, default=-1)


@dataclass(frozen=True)
class AccuracyView:
    """A version's event-time accuracy as read back from Redis, partitions summed."""

    bucket_ms: int
    min_labels: int
    calibration: float | None
    buckets: dict[int, BucketCounts]

    @classmethod
    def read(
        cls, index: Mapping[str, str], buckets: Mapping[int, Mapping[str, str]]
    ) -> AccuracyView:
        calibration = index.get("calibration")
        return cls(
            bucket_ms=int(index.get("bucket_ms", "0")),
            min_labels=int(index.get("min_labels", "1")),
            calibration=float(calibration) if calibration is not None else None,
            buckets={start: bucket_counts(f) for start, f in buckets.items() if f},
        )

    def snapshot(self) -> AccuracySnapshot | None:
        return core.snapshot(self.buckets, self.bucket_ms, self.min_labels, self.calibration)

    def rows(self) -> list[dict[str, float | int | None]]:
        """One row per bucket, newest first: counts, accuracy, coverage, delay, estimate."""
        out: list[dict[str, float | int | None]] = []
        for start, c in sorted(self.buckets.items(), reverse=True):
            out.append(
                {
                    "start_ms": start,
                    "end_ms": start + self.bucket_ms,
                    "scored": c.scored,
                    "labelled": c.labelled,
                    "correct": c.correct,
                    "accuracy": c.accuracy,
                    "coverage": c.coverage,
                    "delay_mean_ms": c.delay_mean_ms,
                    "delay_max_ms": c.delay_max_ms if c.labelled else None,
                    "estimate": core.estimate(c, self.calibration),
                }
            )
        return out


def bucket_starts(index: Mapping[str, str], limit: int) -> list[int]:
    """The bucket starts worth reading for a version, newest first, at most `limit`."""
    newest = newest_bucket(index)
    bucket_ms = int(index.get("bucket_ms", "0"))
    horizon_ms = int(index.get("horizon_ms", "0"))
    if newest < 0 or bucket_ms <= 0:
        return []
    count = min(limit, max(horizon_ms // bucket_ms, 1))
    return [newest - i * bucket_ms for i in range(count)]


def bucket_hash_key(prefix: str, version: Version, bucket_ms: int, start: int) -> str:
    model, number = version
    return ACCURACY_BUCKET_KEY.format(
        prefix=prefix, model=model, version=number, bucket=window_name(bucket_ms), start=start
    )


@dataclass
class AccuracyBook:
    """The event-time accuracy buckets of every (model version, join partition) seen here."""

    table: StateTable
    bucket_ms: int
    horizon_ms: int
    min_labels: int = 30
    calibration: Callable[[Version], float | None] = lambda _v: None
    metrics: FeaturesMetrics | None = None
    states: dict[Owner, EventTimeAccuracy] = field(default_factory=dict)
    dirty: dict[tuple[Owner, int], int] = field(default_factory=dict)
    touched: set[Version] = field(default_factory=set)

    def _state(self, owner: Owner) -> EventTimeAccuracy:
        state = self.states.get(owner)
        if state is None:
            state = self.states[owner] = EventTimeAccuracy(self.bucket_ms, self.horizon_ms)
        return state

    def scored(
        self, version: Version, event_time_ms: int, confidence: float, partition: int
    ) -> None:
        """Count an event in its bucket, once, when its first prediction is recorded."""
        owner = (version, partition)
        state = self._state(owner)
        self._changed(owner, state, state.scored(event_time_ms, confidence))
        if self.metrics is not None:
            labels = (version[0], str(version[1]))
            self.metrics.accuracy_scored.labels(*labels).inc()
            self.metrics.accuracy_confidence.labels(*labels).inc(min(max(confidence, 0.0), 1.0))

    def labelled(
        self,
        version: Version,
        event_time_ms: int,
        label_time_ms: int,
        correct: bool,
        partition: int,
    ) -> None:
        """Count a label joined to a prediction in the bucket of the event's time."""
        owner = (version, partition)
        state = self._state(owner)
        self._changed(owner, state, state.labelled(event_time_ms, label_time_ms, correct))
        if self.metrics is not None:
            labels = (version[0], str(version[1]))
            outcome = "correct" if correct else "wrong"
            self.metrics.accuracy_labelled.labels(*labels, outcome).inc()
            self.metrics.label_delay.labels(*labels).observe(
                max(label_time_ms - event_time_ms, 0) / 1000
            )

    def _changed(self, owner: Owner, state: EventTimeAccuracy, start: int | None) -> None:
        if start is None:
            return  # older than the horizon: nothing kept, nothing written
        version, partition = owner
        self.table.put(
            partition,
            bucket_key(version, partition, self.bucket_ms, start),
            core.encode(state.buckets[start]),
        )
        self.dirty[(owner, start)] = self.dirty.get((owner, start), 0) + 1
        self.touched.add(version)
        for gone in state.expire():
            self.table.delete(partition, bucket_key(version, partition, self.bucket_ms, gone))
            self.dirty.pop((owner, gone), None)

    def buckets(self, version: Version) -> dict[int, BucketCounts]:
        """The version's buckets over every partition held here, summed."""
        return core.merge(s.buckets for (v, _), s in self.states.items() if v == version)

    def snapshot(self, version: Version) -> AccuracySnapshot | None:
        return core.snapshot(
            self.buckets(version), self.bucket_ms, self.min_labels, self.calibration(version)
        )

    def estimate(self, version: Version) -> tuple[float, int] | None:
        """The confidence estimate of the version's newest scored bucket, and its start."""
        buckets = self.buckets(version)
        scored = [b for b, c in buckets.items() if c.scored]
        if not scored:
            return None
        value = core.estimate(buckets[max(scored)], self.calibration(version))
        return (value, max(scored)) if value is not None else None

    def versions(self) -> list[Version]:
        return sorted({v for v, _ in self.states})

    def restore(self) -> None:
        """Rebuild the states from the table (after a recovery); other bucket sizes are dropped."""
        self.states.clear()
        self.dirty.clear()
        for key, value in self.table.items():
            version, partition, bucket_ms, start = parse_bucket_key(key)
            if bucket_ms != self.bucket_ms:
                self.table.delete(partition, key)
                continue
            self._state((version, partition)).buckets[start] = core.decode(value)
        for (version, partition), state in self.states.items():
            for gone in state.expire():
                self.table.delete(partition, bucket_key(version, partition, self.bucket_ms, gone))
        self.mark_all_dirty()

    def recount_start(self, watermark_ms: int, held_since_ms: int) -> int:
        """The first bucket start a recount of the join's events covers: the oldest bucket
        kept (of any owner, or the horizon behind the newest event time seen), but no older
        than the first bucket whose events the join all still holds (`held_since_ms` on)."""
        b = self.bucket_ms
        oldest = [s.oldest_kept(s.newest_ms) for s in self.states.values() if s.buckets]
        oldest.append(window_start(watermark_ms, b) - self.horizon_ms + b)
        return max(min(oldest), -(-held_since_ms // b) * b)

    def replace_from(self, start_ms: int, counted: Mapping[Owner, EventTimeAccuracy]) -> None:
        """Replace every bucket from `start_ms` on with a recount of the join's events (older
        ones stay as restored), write the table where it differs, and mark all dirty."""
        for owner in set(self.states) | set(counted):
            version, partition = owner
            state = self._state(owner)
            before = set(state.buckets)
            state.buckets = {b: c for b, c in state.buckets.items() if b < start_ms}
            if owner in counted:
                state.buckets.update(counted[owner].buckets)
            state.expire()
            for start in before - set(state.buckets):
                self.table.delete(partition, bucket_key(version, partition, self.bucket_ms, start))
            for start in [b for b in state.buckets if b >= start_ms]:
                key = bucket_key(version, partition, self.bucket_ms, start)
                value = core.encode(state.buckets[start])
                if self.table.get(key) != value:
                    self.table.put(partition, key, value)
            if not state.buckets:
                del self.states[owner]
        held = {(owner, b) for owner, state in self.states.items() for b in state.buckets}
        for gone in [k for k in self.dirty if k not in held]:
            del self.dirty[gone]  # a flush under way settles nothing of what is gone
        self.mark_all_dirty()

    def mark_all_dirty(self) -> None:
        for owner, state in self.states.items():
            for start in state.buckets:
                self.dirty[(owner, start)] = self.dirty.get((owner, start), 0) + 1
            self.touched.add(owner[0])

    def take_touched(self) -> list[Version]:
        """Versions changed since the last call (whose gauges want refreshing)."""
        out = sorted(self.touched)
        self.touched.clear()
        return out

    def pending(
        self, prefix: str, ttl_ms: int
    ) -> tuple[list[HashWrite], dict[tuple[Owner, int], int]]:
        """Hash writes of the dirty buckets, and of the index of each owner they belong to."""
        snapshot = dict(self.dirty)
        writes: list[HashWrite] = []
        owners: set[Owner] = set()
        for owner, start in sorted(snapshot):
            counts = self.states[owner].buckets[start]
            version, partition = owner
            writes.append(
                bucket_write(
                    prefix, version, partition, self.bucket_ms, start, counts, self.horizon_ms
                )
            )
            owners.add(owner)
        for owner in sorted(owners):
            version, partition = owner
            writes.append(
                index_write(
                    prefix,
                    version,
                    partition,
                    self.states[owner],
                    self.calibration(version),
                    ttl_ms,
                )
            )
        return writes, snapshot

    def settle(self, snapshot: Mapping[tuple[Owner, int], int]) -> None:
        for key, count in snapshot.items():
            if self.dirty.get(key) == count:
                del self.dirty[key]
