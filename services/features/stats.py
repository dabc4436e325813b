"""Windowed confidence statistics per asset and model version, and the Redis writes they become.

State is one ConfidenceStats per tumbling bucket of each series (asset, model, version), kept
in memory and written through a changelog-backed table. A flush turns the buckets changed
since the last successful flush into hash writes: the bucket's tumbling window, the hopping
windows that contain it up to the trailing one (a merge of their buckets; windows reaching
further are still filling and are written when they become the trailing one), and the asset's
"latest" fields. A bucket stays dirty until Redis acknowledged it, so an outage only delays
writes; when Redis comes back without our data (its sentinel key is gone), every bucket held
is written again.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from driftline.schemas.result_batch import DecodedResults
from driftline.services.core.windowfold import Index, IntArray, admit, bucket_sums
from driftline.services.core.windows import PERCENTILES, ConfidenceStats, WindowSpec
from driftline.services.features.store import (
    ASSET_FIELD,
    ASSET_KEY,
    EVENT_TIME_FIELD,
    STATS_KEY,
    HashWrite,
    num,
    window_name,
)
from driftline.services.features.tables import StateTable

SEP = "\x1f"

Series = tuple[str, str, int]  # asset id, model name, model version
BucketId = tuple[Series, int]  # series, bucket start (ms)


def bucket_key(series: Series, bucket: int) -> bytes:
    asset, model, version = series
    return SEP.join((asset, model, str(version), str(bucket))).encode()


FLOOR = "floor"


def floor_key(series: Series) -> bytes:
    asset, model, version = series
    return SEP.join((asset, model, str(version), FLOOR)).encode()


def parse_key(key: bytes) -> tuple[Series, int | None]:
    """(series, bucket start) of a bucket key; bucket None for the series' floor record."""
    asset, model, version, bucket = key.decode().split(SEP)
    return (asset, model, int(version)), (None if bucket == FLOOR else int(bucket))


_POSITION = struct.Struct(">iq")


def _pack(position: tuple[int, int], stats: ConfidenceStats) -> bytes:
    return _POSITION.pack(*position) + stats.to_bytes()


def _unpack(value: bytes) -> tuple[tuple[int, int], ConfidenceStats]:
    partition, offset = _POSITION.unpack_from(value)
    return (partition, offset), ConfidenceStats.from_bytes(value[_POSITION.size :])


@dataclass(frozen=True)
class StatsConfig:
    spec: WindowSpec
    low_threshold: float
    lateness_ms: int
    key_prefix: str
    stats_ttl_ms: int
    latest_ttl_ms: int


def stats_fields(stats: ConfidenceStats, start: int, size: int) -> dict[str, str]:
    """The features of one window as stored (ordering fields excluded)."""
    fields = {
        "window_start_ms": str(start),
        "window_end_ms": str(start + size),
        "confidence_mean": num(stats.mean),
        "low_confidence_rate": num(stats.low_rate),
    }
    for q, value in zip(PERCENTILES, stats.percentiles(PERCENTILES), strict=True):
        fields[f"confidence_p{q}"] = num(value)
    for name, share in stats.class_mix().items():
        fields[f"class.{name}"] = num(share)
    return fields


@dataclass
class AddReport:
    accepted: int = 0
    late: int = 0
    replayed: int = 0


@dataclass
class StatsAggregator:
    """Buckets of every series this worker owns; dirty ones wait for the next flush."""

    config: StatsConfig
    table: StateTable
    buckets: dict[Series, dict[int, ConfidenceStats]] = field(default_factory=dict)
    partition_of: dict[Series, int] = field(default_factory=dict)
    newest: dict[Series, int] = field(default_factory=dict)
    # bucket -> change count; a flush clears a bucket only if it did not change meanwhile
    dirty: dict[BucketId, int] = field(default_factory=dict)
    # The oldest bucket start from which every bucket is still held (raised by eviction):
    # hopping windows starting before it would be incomplete, so they are never written.
    floor: dict[Series, int] = field(default_factory=dict)
    # (partition, offset) of the last source record folded into each bucket
    offsets: dict[BucketId, tuple[int, int]] = field(default_factory=dict)
    watermark_ms: int = 0

    def add(self, batch: DecodedResults, partitions: IntArray, offsets: IntArray) -> AddReport:
        """Fold a decoded batch in, in stream order; row i came from (partitions[i], offsets[i]).

        An event is late when its bucket is older than the newest bucket its series had seen
        before it, minus the allowed lateness; late events are dropped and counted. The rule
        depends only on the order of a series' events (one partition), never on batching, so
        a replay makes the same decisions. Each bucket remembers the last source offset it
        folded in (stored with it in the changelog), so records replayed after a crash, which
        Kafka redelivers from the last committed offset, are not counted twice. The decisions
        and sums are made for the whole batch at once (services.core.windowfold); what is
        left per bucket is updating it and its changelog record.
        """
        report = AddReport()
        if not len(batch):
            return report
        codes, series_list = self._series_codes(batch)
        c = self.config
        newest, offsets_held = self.newest, self.offsets
        admission = admit(
            codes,
            batch.event_time_ms,
            partitions,
            offsets,
            bucket_ms=c.spec.bucket_ms,
            lateness_ms=c.lateness_ms,
            newest=[newest.get(s) for s in series_list],
            seen=lambda code, start: offsets_held.get((series_list[code], start)),
        )
        groups, accepted = admission.groups, admission.accepted
        report.late = int(np.count_nonzero(admission.late))
        report.replayed = int(np.count_nonzero(admission.replayed))
        rows = np.flatnonzero(accepted)
        if not len(rows):
            return report
        sums = bucket_sums(
            groups.group[rows],
            len(groups),
            batch.confidence[rows],
            batch.event_time_ms[rows],
            batch.predicted[rows],
            len(batch.class_names),
            c.low_threshold,
        )
        names = batch.class_names
        parts, offs, model_of = partitions.tolist(), offsets.tolist(), batch.model_index
        touched = sorted((first, g) for g, first in enumerate(sums.first_event) if first >= 0)
        for _, g in touched:
            series, bucket = series_list[groups.series[g]], groups.start[g]
            held = self.buckets.setdefault(series, {})
            stats = held.get(bucket)
            if stats is None:
                stats = held[bucket] = ConfidenceStats()
            counts = sums.classes[g]
            stats.fold(
                count=sums.count[g],
                sum_micro=sums.sum_micro[g],
                low=sums.low[g],
                first_ms=sums.first_ms[g],
                last_ms=sums.last_ms[g],
                hist=sums.hist[g],
                classes={names[k]: int(counts[k]) for k in np.flatnonzero(counts)},
                known_classes=batch.models[int(model_of[rows[sums.first_event[g]]])].classes,
            )
            last = int(rows[sums.last_event[g]])
            position = (parts[last], offs[last])
            bid = (series, bucket)
            self.offsets[bid] = position
            self.table.put(position[0], bucket_key(series, bucket), _pack(position, stats))
            self.dirty[bid] = self.dirty.get(bid, 0) + 1
            if bucket > newest.get(series, bucket - 1):
                newest[series] = bucket
            report.accepted += sums.count[g]
            self.watermark_ms = max(self.watermark_ms, stats.last_ms)
        # A series' partition is that of its last counted event.
        counted = codes[rows][::-1]
        found, back = np.unique(counted, return_index=True)
        for code, k in zip(found.tolist(), back.tolist(), strict=True):
            self.partition_of[series_list[code]] = parts[int(rows[len(rows) - 1 - k])]
        return report

    def _series_codes(self, batch: DecodedResults) -> tuple[Index, list[Series]]:
        """Number the batch's series (asset, model, version) in the order they first come."""
        models = [(m.model_name, m.model_version) for m in batch.models]
        code_of: dict[tuple[str, int], int] = {}
        series_code: dict[Series, int] = {}
        series_list: list[Series] = []
        codes: list[int] = []
        append = codes.append
        for asset, model in zip(batch.asset_ids, batch.model_index.tolist(), strict=True):
            code = code_of.get((asset, model))
            if code is None:
                series = (asset, *models[model])
                code = series_code.get(series)
                if code is None:
                    code = series_code[series] = len(series_list)
                    series_list.append(series)
                code_of[(asset, model)] = code
            append(code)
        return np.asarray(codes, dtype=np.intp), series_list

    def restore(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Load state recovered from the changelog; all of it is written to Redis again."""
        n = 0
        for key, value in items:
            series, bucket = parse_key(key)
            if bucket is None:
                self.floor[series] = int(value)
                continue
            position, stats = _unpack(value)
            self.buckets.setdefault(series, {})[bucket] = stats
            self.offsets[(series, bucket)] = position
            self.newest[series] = max(bucket, self.newest.get(series, bucket))
            self.watermark_ms = max(self.watermark_ms, stats.last_ms)
            self.partition_of[series] = position[0]
            n += 1
        self.mark_all_dirty()
        return n

    def mark_all_dirty(self) -> None:
        for series, buckets in self.buckets.items():
            for bucket in buckets:
                self.dirty[(series, bucket)] = self.dirty.get((series, bucket), 0) + 1

    def pending(self) -> tuple[list[HashWrite], dict[BucketId, int]]:
        """The writes that bring Redis up to date, and the dirty marks they settle."""
        snapshot = dict(self.dirty)
        by_series: dict[Series, set[int]] = defaultdict(set)
        for series, bucket in snapshot:
            by_series[series].add(bucket)
        writes: list[HashWrite] = []
        for series, buckets in by_series.items():
            writes += self._series_writes(series, sorted(buckets))
        return writes, snapshot

    def settle(self, snapshot: dict[BucketId, int]) -> None:
        """Mark the snapshot's buckets clean, unless they changed after it was taken."""
        for bid, count in snapshot.items():
            if self.dirty.get(bid) == count:
                del self.dirty[bid]

    def _series_writes(self, series: Series, dirty: list[int]) -> list[HashWrite]:
        c = self.config
        spec = c.spec
        asset, model, version = series
        held = self.buckets.get(series, {})
        tumbling, hopping = window_name(spec.bucket_ms), window_name(spec.hopping_ms)
        latest_key = ASSET_KEY.format(prefix=c.key_prefix, asset=asset)
        writes: list[HashWrite] = []

        def window_write(
            window: str, start: int, size: int, stats: ConfidenceStats
        ) -> dict[str, str]:
            key = STATS_KEY.format(
                prefix=c.key_prefix,
                asset=asset,
                model=model,
                version=version,
                window=window,
                start=start,
            )
            order = ((EVENT_TIME_FIELD, stats.last_ms), ("count", stats.count))
            features = stats_fields(stats, start, size)
            fields = {
                "asset_id": asset,
                "model": model,
                "version": str(version),
                "window": window,
                **features,
            }
            writes.append(HashWrite(key, order, fields, c.stats_ttl_ms))
            return features

        def latest_write(
            window: str, start: int, stats: ConfidenceStats, features: dict[str, str]
        ) -> None:
            def f(feature: str) -> str:
                return ASSET_FIELD.format(
                    model=model, version=version, window=window, feature=feature
                )

            order = (
                (f("window_start_ms"), start),
                (f(EVENT_TIME_FIELD), stats.last_ms),
                (f("count"), stats.count),
            )
            fields = {f(k): v for k, v in features.items() if k != "window_start_ms"}
            writes.append(HashWrite(latest_key, order, fields, c.latest_ttl_ms))

        # The asset hash shows the newest bucket and the hopping window that ends with it.
        # Hopping windows that reach past that one are still filling: each is written once
        # it is the trailing window, and again whenever a (late) event changes one of its
        # buckets, so every window ends with its complete value however the flushes fell.
        newest = self.newest.get(series)
        trailing = spec.trailing_hopping_start(newest) if newest is not None else None
        hopping_starts: set[int] = set()
        for bucket in dirty:
            stats = held.get(bucket)
            if stats is None:
                continue
            features = window_write(tumbling, bucket, spec.bucket_ms, stats)
            if bucket == newest:
                latest_write(tumbling, bucket, stats, features)
            hopping_starts.update(spec.hopping_starts(bucket))
        floor = self.floor.get(series)
        for start in sorted(hopping_starts):
            if (floor is not None and start < floor) or trailing is None or start > trailing:
                continue
            merged = ConfidenceStats.merged(held[b] for b in spec.buckets_in(start) if b in held)
            if merged.count == 0:
                continue
            features = window_write(hopping, start, spec.hopping_ms, merged)
            if start == trailing:
                latest_write(hopping, start, merged, features)
        return writes

    def evict(self) -> int:
        """Forget clean buckets no hopping window of an on-time event can need any more."""
        c = self.config
        keep_ms = c.spec.hopping_ms + c.lateness_ms
        removed = 0
        for series in list(self.buckets):
            buckets = self.buckets[series]
            newest = self.newest.get(series, 0)
            idle = newest < self.watermark_ms - c.stats_ttl_ms
            partition = self.partition_of.get(series)
            floor = self.floor.get(series)
            for bucket in sorted(b for b in buckets if idle or b < newest - keep_ms):
                dirty = (series, bucket) in self.dirty
                # A dirty bucket waits for Redis, unless Redis would have expired it by now.
                if dirty and bucket + c.spec.bucket_ms >= self.watermark_ms - c.stats_ttl_ms:
                    break
                self.dirty.pop((series, bucket), None)
                self.offsets.pop((series, bucket), None)
                del buckets[bucket]
                self.table.delete(partition, bucket_key(series, bucket))
                floor = bucket + c.spec.bucket_ms
                removed += 1
            if not buckets:
                del self.buckets[series]
                self.newest.pop(series, None)
                self.partition_of.pop(series, None)
                self.floor.pop(series, None)
                self.table.delete(partition, floor_key(series))
            elif floor is not None and floor != self.floor.get(series):
                self.floor[series] = floor
                self.table.put(partition, floor_key(series), str(floor).encode())
        return removed

    def forget_partition(self, partition: int) -> int:
        """Drop the series of a partition this worker no longer holds; returns how many."""
        gone = [series for series, p in self.partition_of.items() if p == partition]
        for series in gone:
            for bucket in self.buckets.pop(series, {}):
                self.dirty.pop((series, bucket), None)
                self.offsets.pop((series, bucket), None)
            self.newest.pop(series, None)
            self.floor.pop(series, None)
            del self.partition_of[series]
        return len(gone)

    def bucket_count(self) -> int:
        return sum(len(b) for b in self.buckets.values())
