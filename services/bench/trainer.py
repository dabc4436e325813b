"""`driftline bench trainer`: what retraining costs on this machine.

Measures, on the configured device (CPU unless CUDA is present and allowed):
1. retraining the sensor 1D-CNN on N simulated windows (default 10,000) and the image CNN on
   M simulated photos (default 2,000): fit time and time per epoch;
2. export + check + publish: ONNX export with the checker and the ONNX Runtime parity check,
   then writing, reading back and signing the artifacts and publishing the registry record;
3. the sensor inference consumer's throughput on a backlog, alone and while a training runs
   in another process on the same machine (needs Kafka; skipped with --no-kafka).
Everything runs under a fresh topic prefix and a temporary artifact root, removed afterwards.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES
from driftline.schemas.messages import MODALITY_IMAGE, MODALITY_SENSOR, STATUS_CHAMPION, Lineage
from driftline.services.runtime.settings import KafkaSettings
from driftline.trainer.settings import TrainerSettings


@dataclass
class TrainingFigures:
    modality: str
    examples: int
    epochs: int
    device: str
    data_seconds: float
    fit_seconds: float
    seconds_per_epoch: float
    export_check_seconds: float
    publish_seconds: float
    holdout_macro_f1: float


@dataclass
class ThroughputFigures:
    events: int
    alone_events_per_s: float
    during_training_events_per_s: float
    training_seconds: float
    overlapped: bool


@dataclass
class TrainerBench:
    cpu: str
    torch_threads: int
    trainings: list[TrainingFigures] = field(default_factory=list)
    throughput: ThroughputFigures | None = None
    notes: list[str] = field(default_factory=list)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


def _data(modality: str, n: int, seed: int) -> tuple[Any, Any]:
    from driftline.services.simulator.fleet import labelled_dataset
    from driftline.services.simulator.images import labelled_images

    if modality == MODALITY_IMAGE:
        photos, y = labelled_images(n, seed)
        return photos.transpose(0, 3, 1, 2).copy(), y
    return labelled_dataset(n, seed)


def bench_training(
    settings: TrainerSettings, modality: str, n: int, writer: Any, root: str
) -> TrainingFigures:
    """Train from scratch on n simulated examples, export, check, sign and publish."""
    from driftline.services.runtime.artifacts import FsspecArtifactStore
    from driftline.services.runtime.signing import generate_keypair
    from driftline.trainer.dataset import LabelledSet
    from driftline.trainer.publish import build_version
    from driftline.trainer.retrain import train_challenger
    from driftline.trainer.runs import retrain_config

    started = time.monotonic()
    x, y = _data(modality, n, settings.seed)
    data_seconds = time.monotonic() - started
    config = retrain_config(settings, modality)
    challenger = train_challenger(modality, LabelledSet.from_arrays(x, y), None, config)
    private, _ = generate_keypair()
    name = MODEL_NAMES[modality]
    published = time.monotonic()
    mv = build_version(
        store=FsspecArtifactStore(root),
        name=name,
        version=writer.next_version(name),
        modality=modality,
        exported=challenger.exported,
        model=challenger.model,
        classes=list(INSULATOR_CLASSES),
        metrics=challenger.metrics,
        lineage=Lineage(source="bench"),
        status=STATUS_CHAMPION,
        signing_key=private.decode(),
        reference=challenger.reference,
    )
    writer.publish(mv)
    publish_seconds = time.monotonic() - published
    report = challenger.report
    return TrainingFigures(
        modality=modality,
        examples=n,
        epochs=len(report.epochs),
        device=report.device,
        data_seconds=data_seconds,
        fit_seconds=report.seconds,
        seconds_per_epoch=report.seconds / max(1, len(report.epochs)),
        export_check_seconds=challenger.metrics["export_seconds"],
        publish_seconds=publish_seconds,
        holdout_macro_f1=challenger.metrics["holdout_macro_f1"],
    )


def _train_in_child(settings_json: str, n: int, fitting: Any, done: Any) -> None:
    """The competing training, in its own process as the trainer service would be."""
    from driftline.trainer.dataset import LabelledSet
    from driftline.trainer.retrain import train_challenger
    from driftline.trainer.runs import retrain_config

    settings = TrainerSettings.model_validate_json(settings_json)
    x, y = _data(MODALITY_SENSOR, n, settings.seed)
    started = time.monotonic()
    config = retrain_config(settings, MODALITY_SENSOR)
    fitting.set()
    train_challenger(MODALITY_SENSOR, LabelledSet.from_arrays(x, y), None, config)
    done.value = time.monotonic() - started


def _drain_rate(kafka: KafkaSettings, group: str, events: int, seed: int) -> float:
    """Events per second the sensor consumer scores, on a backlog of `events` windows."""
    from driftline.services.inference import service
    from driftline.services.inference.handler import BatchStats
    from driftline.services.inference.settings import InferenceSettings
    from driftline.services.runtime.shutdown import StopFlag
    from driftline.services.simulator import sensors
    from driftline.services.simulator.settings import SimulatorSettings

    sensors.run(
        SimulatorSettings(kafka=kafka, count=events, rate=1e9, assets=200, seed=seed),
        progress=False,
    )
    stop = StopFlag()
    stamps: list[tuple[float, int]] = []

    def on_batch(stats: BatchStats) -> None:
        stamps.append((time.monotonic(), stats.scored))
        if sum(s for _, s in stamps) >= events:
            stop.set()

    settings = InferenceSettings(kafka=kafka, group_id=group, max_batch=256, max_wait_ms=20)
    worker = threading.Thread(target=service.run, args=(settings, stop, on_batch), daemon=True)
    worker.start()
    worker.join(timeout=600)
    stop.set()
    if len(stamps) < 2:
        return 0.0
    first_t, first_n = stamps[0]
    scored = sum(n for _, n in stamps) - first_n
    return scored / max(stamps[-1][0] - first_t, 1e-9)


def bench_throughput(settings: TrainerSettings, events: int, train_n: int) -> ThroughputFigures:
    """Consumer throughput on a backlog, alone, then with a training in another process."""
    alone = _drain_rate(settings.kafka, "bench-alone", events, seed=1)
    ctx = mp.get_context("spawn")
    done = ctx.Value("d", 0.0)
    fitting = ctx.Event()
    child = ctx.Process(
        target=_train_in_child, args=(settings.model_dump_json(), train_n, fitting, done)
    )
    child.start()
    fitting.wait(timeout=300)  # the clock starts once the competing training is fitting
    during = _drain_rate(settings.kafka, "bench-during", events, seed=2)
    overlapped = child.is_alive()
    child.join(timeout=1800)
    return ThroughputFigures(events, alone, during, float(done.value), overlapped)


def run(
    settings: TrainerSettings,
    *,
    sensor_windows: int,
    images: int,
    stream_events: int,
    use_kafka: bool,
) -> TrainerBench:
    import torch

    from driftline.trainer.publish import KafkaRegistryWriter, MemoryRegistryWriter

    result = TrainerBench(cpu=_cpu_name(), torch_threads=torch.get_num_threads())
    tmp = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    root = tmp.as_uri()
    kafka = settings.kafka
    writer: Any = MemoryRegistryWriter()
    if use_kafka:
        from driftline.services.runtime.kafka import admin, create_topics

        kafka = kafka.model_copy(update={"topic_prefix": f"bench-{uuid.uuid4().hex[:8]}."})
        create_topics(kafka)
        writer = KafkaRegistryWriter(kafka)
    else:
        result.notes.append("no Kafka: publish went to the in-memory registry twin")
    settings = settings.model_copy(update={"kafka": kafka, "artifact_root": root})
    try:
        for modality, n in ((MODALITY_SENSOR, sensor_windows), (MODALITY_IMAGE, images)):
            if n > 0:
                figures = bench_training(settings, modality, n, writer, root)
                result.trainings.append(figures)
                _print_training(figures)
        if use_kafka and stream_events > 0:
            result.throughput = bench_throughput(settings, stream_events, sensor_windows)
            _print_throughput(result.throughput)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if use_kafka:
            client = admin(kafka)
            mine = [
                t for t in client.list_topics(timeout=10).topics if t.startswith(kafka.topic_prefix)
            ]
            if mine:
                for future in client.delete_topics(mine, operation_timeout=30).values():
                    future.result(timeout=30)
    return result


def _print_training(f: TrainingFigures) -> None:
    print(
        f"{f.modality:6} {f.examples:>6} examples  {f.epochs} epochs on {f.device}: "
        f"fit {f.fit_seconds:6.1f}s ({f.seconds_per_epoch:.1f}s/epoch)  "
        f"export+check {f.export_check_seconds:.2f}s  publish {f.publish_seconds:.2f}s  "
        f"holdout macro-F1 {f.holdout_macro_f1:.3f}  (data {f.data_seconds:.1f}s)",
        flush=True,
    )


def _print_throughput(t: ThroughputFigures) -> None:
    print(
        f"inference consumer on {t.events} sensor windows: {t.alone_events_per_s:,.0f}/s alone, "
        f"{t.during_training_events_per_s:,.0f}/s while a training runs "
        f"(that training took {t.training_seconds:.1f}s"
        f"{'' if t.overlapped else '; it ended before the measurement did'})",
        flush=True,
    )


def main(
    settings: TrainerSettings,
    *,
    sensor_windows: int,
    images: int,
    stream_events: int,
    use_kafka: bool,
    json_path: str | None,
) -> int:
    print(f"driftline bench trainer on {_cpu_name()}", flush=True)
    result = run(
        settings,
        sensor_windows=sensor_windows,
        images=images,
        stream_events=stream_events,
        use_kafka=use_kafka,
    )
    for note in result.notes:
        print(f"note: {note}")
    if json_path:
        Path(json_path).write_text(json.dumps(asdict(result), indent=2) + "\n")
        print(f"wrote {json_path}", file=sys.stderr)
    return 0
