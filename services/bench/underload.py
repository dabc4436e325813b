"""The pipeline live under a constant load: latency, a hot swap under load, memory over swaps.

Each part runs the real inference consumer (and its registry watcher) in threads on a prefix of
its own, fed at a constant rate; a hot swap publishes version 2 halfway and counts the events
lost and duplicated while the consumers load it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.contracts import MODEL_NAMES
from driftline.schemas.messages import (
    MODALITY_SENSOR,
    STATUS_CHAMPION,
    CameraImage,
    InferenceResult,
    Lineage,
    ModelVersion,
    SensorWindow,
)
from driftline.services.bench.harness import Reader, bench_kafka, rss_bytes
from driftline.services.bench.load import latency_run
from driftline.services.bench.stages import breakdown, source_appends, stamp_append_time
from driftline.services.bench.workload import Workload, publish
from driftline.services.inference.consumer import InferenceConsumer
from driftline.services.inference.handler import BatchStats, Marks
from driftline.services.inference.metrics import InferenceMetrics
from driftline.services.inference.model import load
from driftline.services.inference.service import decoder_for
from driftline.services.inference.settings import InferenceSettings
from driftline.services.inference.watcher import ModelSlot, RegistryWatcher
from driftline.services.runtime.artifacts import FsspecArtifactStore, sha256_hex
from driftline.services.runtime.heap import freeze_heap
from driftline.services.runtime.kafka import producer
from driftline.services.runtime.settings import KafkaSettings


def _paced_send(
    kafka: KafkaSettings,
    w: Workload,
    rate: float,
    seconds: float,
    sent_at: dict[str, float],
    stop: threading.Event,
) -> int:
    """Send at a constant rate, fresh event ids, recording each send time."""
    prod = producer(kafka, **{"linger.ms": 1})
    topic = kafka.topics.name(w.source_base)
    kind: type[SensorWindow] | type[CameraImage] = (
        SensorWindow if w.modality == MODALITY_SENSOR else CameraImage
    )
    base: list[SensorWindow | CameraImage] = [codec.decode(kind, v) for v in w.avro[:500]]
    run = uuid.uuid4().hex[:6]
    start = time.perf_counter()
    i = 0
    while not stop.is_set():
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) + 1
        while i < due:
            msg = msgspec.structs.replace(
                base[i % len(base)], event_id=f"{run}-{i}", event_time_ms=int(time.time() * 1000)
            )
            sent_at[msg.event_id] = time.perf_counter()
            prod.produce(topic, key=msg.asset_id, value=codec.encode(msg), headers=h.AVRO)
            i += 1
        prod.poll(0)
        time.sleep(max(0.0, (i / rate) - (time.perf_counter() - start)))
    prod.flush(30)
    return i


@dataclass
class Live:
    """A consumer service running in a thread (with its registry watcher) on one prefix."""

    kafka: KafkaSettings
    settings: InferenceSettings
    slot: ModelSlot
    stop: threading.Event
    threads: list[threading.Thread]
    watcher: RegistryWatcher

    @classmethod
    def start(
        cls,
        kafka: KafkaSettings,
        w: Workload,
        exactly_once: bool = False,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> Live:
        settings = InferenceSettings(
            kafka=kafka,
            modality=w.modality,
            exactly_once=exactly_once,
            statistics_interval_ms=0,
            group_id=f"live-{uuid.uuid4().hex[:6]}",
        )
        slot, stop = ModelSlot(), threading.Event()
        metrics = InferenceMetrics(CollectorRegistry())
        watcher = RegistryWatcher(settings, slot, metrics, FsspecArtifactStore("file:///"))
        watcher.start()
        slot.wait_loaded(60)
        _, decoder = decoder_for(settings)
        consumer = InferenceConsumer(settings, w.source_base, decoder, slot, metrics)
        freeze_heap()  # as the service does once ready: the bench's events are not walked
        t = threading.Thread(target=consumer.run, args=(stop.is_set, on_batch), daemon=True)
        t.start()
        return cls(kafka, settings, slot, stop, [watcher.follower, t], watcher)

    def close(self) -> None:
        self.stop.set()
        self.watcher.stop()
        for t in self.threads:
            t.join(timeout=30)


def latency(
    bootstrap: str, partitions: int, w: Workload, root: Path, rate: float, seconds: float
) -> dict[str, Any]:
    kafka = bench_kafka(bootstrap, partitions)
    source = kafka.topics.name(w.source_base)
    stamp_append_time(kafka, [source, kafka.topics.inference_results])
    publish(kafka, w, root, 1)
    marks: list[Marks] = []

    def note(stats: BatchStats) -> None:
        if stats.marks is not None:
            marks.append(stats.marks)

    def where(
        warm: list[str],
        planned: dict[str, float],
        arrived: dict[str, float],
        appended: dict[str, float],
    ) -> dict[str, Any]:
        sources = source_appends(kafka, source, w.modality)
        return breakdown(warm, planned, arrived, appended, sources, marks)

    live = Live.start(kafka, w, on_batch=note)
    try:
        return latency_run(
            bootstrap,
            source,
            kafka.topics.inference_results,
            w.avro[:500],
            w.modality,
            rate,
            seconds,
            uuid.uuid4().hex[:6],
            stages=where,
        )
    finally:
        live.close()


def swap_under_load(
    bootstrap: str, partitions: int, w: Workload, root: Path, rate: float
) -> dict[str, float]:
    kafka = bench_kafka(bootstrap, partitions)
    publish(kafka, w, root, 1)
    live = Live.start(kafka, w)
    sent_at: dict[str, float] = {}
    seen: dict[str, int] = {}
    first_v2: list[float] = []

    def got(value: bytes, now: float) -> None:
        r = codec.decode(InferenceResult, value)
        seen[r.event_id] = seen.get(r.event_id, 0) + 1
        if r.model_version == 2 and not first_v2:
            first_v2.append(now)

    reader = Reader(kafka, kafka.topics.inference_results, got).start()
    stop = threading.Event()
    sender_out: list[int] = []
    sender = threading.Thread(
        target=lambda: sender_out.append(_paced_send(kafka, w, rate, 8.0, sent_at, stop))
    )
    sender.start()
    time.sleep(3.0)
    published = time.perf_counter()
    publish(kafka, w, root, 2)
    sender.join()
    deadline = time.monotonic() + 20
    while len(seen) < len(sent_at) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    reader.stop.set()
    live.close()
    lost = len(set(sent_at) - set(seen))
    dup = sum(c - 1 for c in seen.values())
    return {
        "rate_per_s": rate,
        "sent": len(sent_at),
        "new_version_scoring_after_s": (first_v2[0] - published) if first_v2 else float("nan"),
        "lost": lost,
        "duplicated": dup,
    }


def swap_memory(w: Workload, root: Path, swaps: int) -> dict[str, float]:
    store = FsspecArtifactStore(root.as_uri())
    name = MODEL_NAMES[w.modality]
    uri = store.put(f"{name}/mem/model.onnx", w.onnx)
    mv = ModelVersion(
        name=name,
        version=1,
        modality=w.modality,
        artifact_uri=uri,
        sha256=sha256_hex(w.onnx),
        inputs=[],
        outputs=[],
        classes=w.classes,
        lineage=Lineage(source="bench"),
        status=STATUS_CHAMPION,
        created_time_ms=0,
    )
    slot = ModelSlot()
    batch = w.inputs[:64]
    rss: list[int] = []
    for i in range(swaps):
        slot.swap(load(msgspec.structs.replace(mv, version=i + 1), store))
        model = slot.model
        assert model is not None
        model.predict(batch)
        rss.append(rss_bytes())
    mib = 1024 * 1024
    return {
        "swaps": swaps,
        "rss_after_first_mib": rss[0] / mib,
        "rss_after_10_mib": rss[min(9, swaps - 1)] / mib,
        "rss_after_last_mib": rss[-1] / mib,
        "growth_after_10_mib": (rss[-1] - rss[min(9, swaps - 1)]) / mib,
    }
