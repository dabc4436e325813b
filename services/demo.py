"""The composition root for commands that join the simulator, the trainer and inference."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from schemas.contracts import MODEL_NAMES
from schemas.messages import MODALITY_IMAGE, MODALITY_SENSOR, ModelVersion
from services.inference.consumer import BatchStats
from services.runtime.settings import (
    InferenceSettings,
    KafkaSettings,
    SimulatorSettings,
    TrainerSettings,
)
from services.runtime.shutdown import StopFlag

if TYPE_CHECKING:
    from trainer.fit import EpochReport
    from trainer.runs import RunOutcome


class BootstrapFailed(RuntimeError):
    """A bootstrap run published nothing; the message says why."""


def _show_epoch(settings: TrainerSettings, label: str) -> Callable[[EpochReport], None]:
    def show(rep: EpochReport) -> None:
        sys.stderr.write(
            f"train {label}: epoch {rep.epoch}/{settings.epochs}  loss {rep.loss:.4f}  "
            f"accuracy {rep.train_accuracy:.3f}  ({rep.seconds:.1f}s)\n"
        )

    return show


def bootstrap_model(
    settings: TrainerSettings, modality: str, count: int | None = None
) -> RunOutcome:
    """Simulate labelled data for one modality, then train, gate, export, sign and publish."""
    from services.simulator.fleet import labelled_dataset
    from services.simulator.images import labelled_images
    from trainer.bootstrap import bootstrap

    x: npt.NDArray[np.float32] | npt.NDArray[np.uint8]
    if modality == MODALITY_IMAGE:
        n = count or settings.bootstrap_images
        x, y = labelled_images(n, settings.seed)
        what = "photos"
    else:
        n = count or settings.bootstrap_windows
        x, y = labelled_dataset(n, settings.seed)
        what = "sensor windows"
    sys.stderr.write(f"train: bootstrap {MODEL_NAMES[modality]} on {n} simulated {what}\n")
    return bootstrap(settings, modality, x, y, on_epoch=_show_epoch(settings, modality))


def _published(outcome: RunOutcome) -> ModelVersion:
    if outcome.version is None:
        raise BootstrapFailed(outcome.summary())
    return outcome.version


def bootstrap_sensor_model(settings: TrainerSettings, windows: int = 8000) -> ModelVersion:
    """Simulate labelled windows and train, export and publish the first sensor model."""
    return _published(bootstrap_model(settings, MODALITY_SENSOR, windows))


def bootstrap_image_model(settings: TrainerSettings, images: int = 2000) -> ModelVersion:
    """Simulate labelled photos and train, export and publish the first image model."""
    return _published(bootstrap_model(settings, MODALITY_IMAGE, images))


@dataclass
class Progress:
    """Counters the demo's status line reads; written from the consumer thread."""

    scored: int = 0
    dead_lettered: int = 0
    batches: int = 0
    model_version: int = 0
    inference_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_batch(self, stats: BatchStats) -> None:
        with self.lock:
            self.scored += stats.scored
            self.dead_lettered += stats.dead_lettered
            self.batches += 1
            self.model_version = stats.model_version
            self.inference_s += stats.inference_s


def main(rate: float, assets: int, metrics_port: int | None) -> int:
    """Stack up, topics, a model, then simulator + inference with a live status line."""
    from services.inference import service
    from services.runtime import localstack, registry
    from services.runtime.kafka import create_topics
    from services.simulator import sensors

    stack = localstack.LocalStack(localstack.default_data_dir(), localstack.StackPorts.from_env())
    status = stack.up()
    print(f"kafka {status.bootstrap_servers}   redis {status.redis_url}")
    kafka = KafkaSettings(bootstrap_servers=status.bootstrap_servers)
    created, _ = create_topics(kafka)
    if created:
        print(f"created {len(created)} topics")
    name = MODEL_NAMES[MODALITY_SENSOR]
    snapshot = registry.read_snapshot(kafka, kafka.topics.models_registry)
    if name not in snapshot.champions:
        mv = bootstrap_sensor_model(TrainerSettings(kafka=kafka))
        print(f"bootstrapped {mv.name} v{mv.version}")

    stop = StopFlag().install()
    progress = Progress()
    infer_settings = InferenceSettings(kafka=kafka, metrics_port=metrics_port)
    errors: list[BaseException] = []

    def infer() -> None:
        try:
            service.run(infer_settings, stop, progress.on_batch)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    def simulate() -> None:
        try:
            sensors.run(
                SimulatorSettings(kafka=kafka, rate=rate, assets=assets), stop=stop, progress=False
            )
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    workers = [threading.Thread(target=f, name=f.__name__) for f in (infer, simulate)]
    for w in workers:
        w.start()
    if metrics_port:
        print(f"metrics http://127.0.0.1:{metrics_port}/metrics")
    print("scoring sensor windows; Ctrl-C to stop")
    started = time.monotonic()
    last = 0
    while not stop.wait(1.0):
        with progress.lock:
            scored, dead, version = progress.scored, progress.dead_lettered, progress.model_version
            per_batch = progress.scored / max(progress.batches, 1)
        elapsed = time.monotonic() - started
        sys.stdout.write(
            f"\r{elapsed:6.0f}s  scored {scored:>9,}  ({scored - last:>5,}/s)  "
            f"dead letters {dead:>5,}  batch {per_batch:5.1f}  model {name} v{version}  "
        )
        sys.stdout.flush()
        last = scored
    for w in workers:
        w.join(timeout=30)
    print("\nstopped; the stack keeps running (`driftline stack down` stops it)")
    if errors:
        print(f"driftline demo: {errors[0]}", file=sys.stderr)
        return 1
    return 0
