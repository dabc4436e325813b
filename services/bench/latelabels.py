"""`driftline bench features --late-labels`: a simulated week of events with labels days late.

The join runs in process (the pipeline, as `rebuild` runs it) on its real disk store: its
tables are RocksDB databases in a temporary directory, opened with the app's options
(services.features.rocks), without the changelog. The fleet runs at accelerated event time:
events for two weeks, labels for the first week's, 1 to 7 days after their event, a share of
them asset inspections. Inputs are "read back" by regenerating the record at the position the
join noted, the labels not yet due wait in a database of the bench's own, and the oracle keeps
only each asset's last half hour of events (what an inspection can cover), so the process
memory is the join's. Printed: resident memory and the join's disk use as the state grows,
and labelled windows out against the oracle (must be equal).
"""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from typing_extensions import override

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.avro import encode_record
from driftline.schemas.contracts import INSULATOR_CLASSES, SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.schemas.messages import InferenceResult, Label
from driftline.services.features.joinkeys import INDEX_BY_TIME
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.pipeline import FeaturesPipeline, PipelineTables
from driftline.services.features.readback import FetchedRecord, Position
from driftline.services.features.records import Outbox, RawRecord
from driftline.services.features.rocks import (
    MIB,
    DiskTable,
    LocalDatabases,
    RocksOptions,
    disk_bytes,
)
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.store import MemoryFeatureStore
from driftline.services.features.tables import KEY_SEP, StateTable, key_partition

DAY_MS = 86_400_000
SAMPLES = np.zeros((len(SENSOR_CHANNELS), SENSOR_SAMPLES), "<f4").tobytes()
PARTITIONS = 6


def _window_bytes(event_id: str, asset_id: str, t: int) -> bytes:
    return encode_record(
        "SensorWindow",
        {
            "schema_version": 1,
            "event_id": event_id,
            "asset_id": asset_id,
            "sensor_id": "s",
            "event_time_ms": t,
            "sample_rate_hz": 1.0,
            "channels": list(SENSOR_CHANNELS),
            "n_samples": SENSOR_SAMPLES,
            "samples": SAMPLES,
        },
    )


class RegeneratingReader:
    """Reads an input back by rebuilding it from its position (event id p<part>-o<offset>)."""

    def __init__(self) -> None:
        self.reads = 0
        self.records = 0

    async def read(self, positions: Sequence[Position]) -> dict[Position, FetchedRecord]:
        self.reads += 1
        self.records += len(positions)
        return {
            pos: FetchedRecord(_window_bytes(f"p{pos[1]}-o{pos[2]}", "x", 0), h.AVRO)
            for pos in positions
        }


@dataclass
class CountingOutbox(Outbox):
    """Keeps the join topic's records for the next join batch; counts everything else."""

    join_topic: str
    pending: list[RawRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @override
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: h.HeaderList,
        *,
        wait: bool = False,
    ) -> None:
        if topic == self.join_topic:
            self.pending.append(RawRecord(topic, 0, len(self.pending), key, value, list(headers)))
        else:
            self.counts[topic] = self.counts.get(topic, 0) + 1

    def take(self) -> list[RawRecord]:
        out, self.pending = self.pending, []
        return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


@dataclass
class Checkpoint:
    day: int
    events: int
    rss_bytes: int
    disk_bytes: int
    cache_bytes: int


class Oracle:
    """Which events the labels must label, counted as they are generated.

    A per-event label labels its event; an inspection labels its asset's events of the last
    `lookback` not labelled already, so only that much of each asset's events is kept.
    """

    def __init__(self, lookback_ms: int) -> None:
        self.lookback_ms = lookback_ms
        self.recent: dict[str, deque[list[int]]] = {}  # asset -> [event time, labelled]
        self.expected = 0

    def event(self, asset: str, t: int, *, labelled: bool) -> None:
        recent = self.recent.setdefault(asset, deque())
        recent.append([t, int(labelled)])
        while recent and recent[0][0] < t - self.lookback_ms:
            recent.popleft()
        self.expected += int(labelled)

    def inspection(self, asset: str, t: int) -> None:
        for entry in self.recent.get(asset, ()):
            if t - self.lookback_ms <= entry[0] <= t and not entry[1]:
                entry[1] = 1
                self.expected += 1


def _held(index: StateTable) -> int:
    """Events held: the join's by-time index, counted (exact, unlike RocksDB's estimate)."""
    return sum(1 for _ in index.scan(INDEX_BY_TIME, bytes([INDEX_BY_TIME[0] + 1])))


def _tables(path: Path, options: RocksOptions) -> tuple[PipelineTables, list[LocalDatabases]]:
    """The join's tables as the app has them on rocksdb://, less the changelog."""
    dbs = [LocalDatabases(path / name, options) for name in ("events", "labels", "index", "acc")]

    def by_asset(key: bytes) -> int:
        return key_partition(key.split(KEY_SEP, 1)[0], PARTITIONS)

    states, parked, index, accuracy = (
        DiskTable(d, PARTITIONS, partition_of=by_asset if i < 2 else None)
        for i, d in enumerate(dbs)
    )
    return PipelineTables(states=states, parked=parked, index=index, accuracy=accuracy), dbs


async def _run(
    settings: FeaturesSettings,
    workdir: Path,
    *,
    assets: int,
    per_asset_per_hour: int,
    label_share: float,
    inspection_share: float,
    seed: int,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    topics = settings.kafka.topics
    outbox = CountingOutbox(f"{settings.faust_app_id}-join")
    reader = RegeneratingReader()
    options = RocksOptions(settings.table_memory_mb * MIB)
    state_dir = workdir / "join"
    tables, dbs = _tables(state_dir, options)
    source_dbs = LocalDatabases(workdir / "source", RocksOptions(8 * MIB))
    source = source_dbs.db(0)  # labels not yet due: key due time + sequence, value the label
    p = FeaturesPipeline(
        settings,
        FeaturesMetrics(CollectorRegistry()),
        MemoryFeatureStore(),
        outbox,
        tables,
        reader=reader,
    )
    assert p.join is not None
    rss0 = _rss_bytes()
    t0 = 1_700_000_000_000
    hour = 3_600_000
    lookback = hour // 2
    offsets = [0] * PARTITIONS
    oracle = Oracle(lookback)
    checkpoints: list[Checkpoint] = []
    labels_in = inspections = events = 0
    seq = 0
    started = time.perf_counter()
    for h_i in range(14 * 24 + 1):  # one hour more: the last labels' wait runs out
        start = t0 + h_i * hour
        inputs: list[RawRecord] = []
        results: list[RawRecord] = []
        for a in range(assets):
            asset = f"insulator-{a:05d}"
            part = a % PARTITIONS
            for k in range(per_asset_per_hour):
                t = start + int((k + rng.random()) * hour / per_asset_per_hour)
                offset = offsets[part]
                offsets[part] += 1
                event_id = f"p{part}-o{offset}"
                value = _window_bytes(event_id, asset, t)
                inputs.append(RawRecord(topics.sensor_windows, part, offset, b"", value, h.AVRO))
                r = InferenceResult(
                    event_id=event_id,
                    asset_id=asset,
                    modality="sensor",
                    model_name="insulator-sensor",
                    model_version=1,
                    classes=list(INSULATOR_CLASSES),
                    probabilities=np.zeros(4, "<f4").tobytes(),
                    predicted_class="healthy",
                    confidence=0.9,
                    event_time_ms=t,
                    scored_time_ms=t + 5,
                )
                results.append(
                    RawRecord(topics.inference_results, part, offset, b"", codec.encode(r), h.AVRO)
                )
                events += 1
                label: Label | None = None
                if h_i < 7 * 24 and rng.random() < label_share:
                    due = t + int(rng.uniform(1, 7) * DAY_MS)
                    if rng.random() < inspection_share:
                        label = Label(
                            true_class="cracked",
                            source="inspection",
                            label_time_ms=due,
                            asset_id=asset,
                            inspection_time_ms=t,
                            lookback_ms=lookback,
                        )
                        inspections += 1
                    else:
                        label = Label(
                            event_id=event_id,
                            true_class="healthy",
                            source="field",
                            label_time_ms=due,
                            asset_id=asset,
                        )
                    seq += 1
                    source.put(due.to_bytes(8, "big") + seq.to_bytes(8, "big"), codec.encode(label))
                oracle.event(asset, t, labelled=label is not None and not label.is_inspection)
                if label is not None and label.is_inspection:
                    oracle.inspection(asset, t)
        await p.on_inputs(inputs)
        await p.on_results(results, forward=True)
        await p.on_join(outbox.take())
        end = start + hour
        batch: list[RawRecord] = []
        # Every label is due a day or more after its event: none is due before `start`.
        for key, value in source.items(from_key=start.to_bytes(8, "big")):
            if int.from_bytes(key[:8], "big") >= end:
                break
            offset = labels_in + len(batch)
            batch.append(RawRecord(topics.feedback_labels, 0, offset, b"", value, h.AVRO))
            source.delete(key)
        if batch:
            labels_in += len(batch)
            await p.on_labels(batch)
            await p.on_join(outbox.take())
        await p.evict()
        if (h_i + 1) % 48 == 0:  # every two simulated days
            checkpoints.append(
                Checkpoint(
                    (h_i + 1) // 24,
                    _held(p.join.index),
                    _rss_bytes(),
                    disk_bytes(state_dir),
                    options.usage_bytes(),
                )
            )
    seconds = time.perf_counter() - started
    out = outbox.counts.get(topics.training_windows, 0)
    held = _held(p.join.index)
    fig = {
        "events": events,
        "labels_in": labels_in,
        "inspections_in": inspections,
        "events_labelled_expected": oracle.expected,
        "labelled_windows_out": out,
        "dead_letters": outbox.counts.get(topics.dlq("feedback.labels"), 0),
        "join_entries": held,
        "rss_start_bytes": rss0,
        "rss_bytes": _rss_bytes(),
        "rss_peak_bytes": _peak_rss_bytes(),
        "disk_bytes": disk_bytes(state_dir),
        "cache_bytes": options.usage_bytes(),
        "cache_limit_bytes": options.memory_bytes,
        "checkpoints": checkpoints,
        "readback_batches": reader.reads,
        "inputs_read_back": reader.records,
        "seconds": seconds,
        "ok": out == oracle.expected,
    }
    for d in [*dbs, source_dbs]:
        d.close()
    return fig


def main(
    settings: FeaturesSettings,
    *,
    assets: int = 10,
    per_asset_per_hour: int = 30,
    label_share: float = 0.25,
    inspection_share: float = 0.1,
    seed: int = 5,
    workdir: Path | None = None,
) -> int:
    with tempfile.TemporaryDirectory(prefix="driftline-latebench-", dir=workdir) as tmp:
        fig = asyncio.run(
            _run(
                settings,
                Path(tmp),
                assets=assets,
                per_asset_per_hour=per_asset_per_hour,
                label_share=label_share,
                inspection_share=inspection_share,
                seed=seed,
            )
        )
    mib = 1024 * 1024
    rate = assets * per_asset_per_hour / 3600
    print(
        f"late labels: {fig['events']:,} events over 14 simulated days ({assets} assets, "
        f"{rate:.2f} events/s), labels 1-7 days late for the first week's\n"
        f"  labels in       {fig['labels_in']:,} ({fig['inspections_in']:,} asset inspections)\n"
        f"  windows out     {fig['labelled_windows_out']:,} "
        f"(expected {fig['events_labelled_expected']:,}: "
        f"{'equal' if fig['ok'] else 'NOT EQUAL'}), dead letters {fig['dead_letters']:,}\n"
        f"  join state      {fig['join_entries']:,} events held, on disk (RocksDB): "
        f"{fig['disk_bytes'] / mib:.1f} MiB\n"
        f"  resident memory {fig['rss_bytes'] / mib:.0f} MiB at the end, peak "
        f"{fig['rss_peak_bytes'] / mib:.0f} MiB ({fig['rss_start_bytes'] / mib:.0f} MiB before "
        f"the first event); RocksDB cache {fig['cache_bytes'] / mib:.0f} of "
        f"{fig['cache_limit_bytes'] / mib:.0f} MiB\n"
        f"  read back       {fig['inputs_read_back']:,} inputs in {fig['readback_batches']:,} "
        f"batches; {fig['seconds']:.1f} s\n"
        f"  {'day':>4} {'events held':>12} {'RSS MiB':>8} {'disk MiB':>9} {'cache MiB':>10}"
    )
    for c in fig["checkpoints"]:
        print(
            f"  {c.day:>4} {c.events:>12,} {c.rss_bytes / mib:>8.0f} {c.disk_bytes / mib:>9.1f} "
            f"{c.cache_bytes / mib:>10.0f}"
        )
    return 0 if fig["ok"] else 1
