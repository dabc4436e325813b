"""`driftline features bench --late-labels`: a simulated week of events with labels days late.

The join runs in process (the pipeline with in-memory tables, as `rebuild` runs it) over a
fleet at accelerated event time: events for two weeks, labels for the first week's, 1 to 7
days after their event, a share of them asset inspections. Inputs are "read back" by
regenerating the record at the position the join noted (no copy of the inputs is held, so the
process memory is the join's). Printed: resident memory and the join's state at the end,
its disk use, and labels in vs labelled windows out against an oracle (must be equal).
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from schemas import codec
from schemas import headers as h
from schemas.avro import encode_record
from schemas.contracts import INSULATOR_CLASSES, SENSOR_CHANNELS, SENSOR_SAMPLES
from schemas.messages import InferenceResult, Label
from services.features.pipeline import FeaturesPipeline, PipelineTables, RawRecord
from services.features.readback import FetchedRecord, Position
from services.features.settings import FeaturesSettings
from services.features.store import MemoryFeatureStore
from services.features.tables import DictTable
from services.runtime.metrics import FeaturesMetrics

DAY_MS = 86_400_000
AVRO: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]
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
            pos: FetchedRecord(_window_bytes(f"p{pos[1]}-o{pos[2]}", "x", 0), AVRO)
            for pos in positions
        }


@dataclass
class CountingOutbox:
    """Keeps the join topic's records for the next join batch; counts everything else."""

    join_topic: str
    pending: list[RawRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

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


async def _run(
    settings: FeaturesSettings,
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
    tables = PipelineTables(states=DictTable(), parked=DictTable(), accuracy=DictTable())
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
    offsets = [0] * PARTITIONS
    pending_labels: list[tuple[int, int, bytes]] = []  # (due, seq, value)
    expected: set[str] = set()
    by_asset: dict[str, list[tuple[int, str]]] = {}
    inspections: list[Label] = []
    labels_in = events = 0
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
                inputs.append(RawRecord(topics.sensor_windows, part, offset, b"", value, AVRO))
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
                    RawRecord(topics.inference_results, part, offset, b"", codec.encode(r), AVRO)
                )
                events += 1
                if h_i < 7 * 24:
                    by_asset.setdefault(asset, []).append((t, event_id))
                if h_i < 7 * 24 and rng.random() < label_share:
                    due = t + int(rng.uniform(1, 7) * DAY_MS)
                    if rng.random() < inspection_share:
                        label = Label(
                            true_class="cracked",
                            source="inspection",
                            label_time_ms=due,
                            asset_id=asset,
                            inspection_time_ms=t,
                            lookback_ms=hour // 2,
                        )
                        inspections.append(label)
                    else:
                        label = Label(
                            event_id=event_id,
                            true_class="healthy",
                            source="field",
                            label_time_ms=due,
                            asset_id=asset,
                        )
                        expected.add(event_id)
                    seq += 1
                    pending_labels.append((due, seq, codec.encode(label)))
        await p.on_inputs(inputs)
        await p.on_results(results, forward=True)
        await p.on_join(outbox.take())
        end = start + hour
        pending_labels.sort()
        n_due = 0
        while n_due < len(pending_labels) and pending_labels[n_due][0] < end:
            n_due += 1
        if n_due:
            batch = [
                RawRecord(topics.feedback_labels, 0, s, b"", v, AVRO)
                for _, s, v in pending_labels[:n_due]
            ]
            del pending_labels[:n_due]
            labels_in += len(batch)
            await p.on_labels(batch)
            await p.on_join(outbox.take())
        await p.evict()
    seconds = time.perf_counter() - started
    for label in inspections:
        lo, hi = label.interval()
        assert label.asset_id is not None
        expected.update(e for t, e in by_asset[label.asset_id] if lo <= t <= hi)
    state_bytes = sum(len(k) + len(v) for k, v in p.join.states.items())
    out = outbox.counts.get(topics.training_windows, 0)
    return {
        "events": events,
        "labels_in": labels_in,
        "inspections_in": len(inspections),
        "events_labelled_expected": len(expected),
        "labelled_windows_out": out,
        "dead_letters": outbox.counts.get(topics.dlq("feedback.labels"), 0),
        "join_entries": len(p.join.states),
        "join_state_bytes": state_bytes,
        "rss_growth_bytes": _rss_bytes() - rss0,
        "rss_bytes": _rss_bytes(),
        "disk_bytes": 0,  # memory tables; their changelogs live in Kafka
        "readback_batches": reader.reads,
        "inputs_read_back": reader.records,
        "seconds": seconds,
        "ok": out == len(expected),
    }


def main(
    settings: FeaturesSettings,
    *,
    assets: int = 10,
    per_asset_per_hour: int = 30,
    label_share: float = 0.25,
    inspection_share: float = 0.1,
    seed: int = 5,
) -> int:
    fig = asyncio.run(
        _run(
            settings,
            assets=assets,
            per_asset_per_hour=per_asset_per_hour,
            label_share=label_share,
            inspection_share=inspection_share,
            seed=seed,
        )
    )
    mib = 1024 * 1024
    print(
        f"late labels: {fig['events']:,} events over 14 simulated days "
        f"({assets} assets), labels 1-7 days late for the first week's\n"
        f"  labels in       {fig['labels_in']:,} ({fig['inspections_in']:,} asset inspections)\n"
        f"  windows out     {fig['labelled_windows_out']:,} "
        f"(expected {fig['events_labelled_expected']:,}: "
        f"{'equal' if fig['ok'] else 'NOT EQUAL'}), dead letters {fig['dead_letters']:,}\n"
        f"  join state      {fig['join_entries']:,} events, {fig['join_state_bytes'] / mib:.1f} MiB"
        f" of keys+values; resident memory {fig['rss_bytes'] / mib:.0f} MiB "
        f"(+{fig['rss_growth_bytes'] / mib:.0f} MiB during the run)\n"
        f"  disk            {fig['disk_bytes']} bytes (memory tables, changelogs in Kafka)\n"
        f"  read back       {fig['inputs_read_back']:,} inputs in {fig['readback_batches']:,} "
        f"batches; {fig['seconds']:.1f} s\n"
    )
    return 0 if fig["ok"] else 1
