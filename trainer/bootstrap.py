"""Bootstrap: train the first sensor model on simulated windows, so a fresh install scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES, SENSOR_CHANNELS, SENSOR_INPUT_NAME
from schemas.messages import MODALITY_SENSOR, STATUS_CHAMPION, Lineage, ModelVersion
from services.runtime import registry
from services.runtime.settings import TrainerSettings
from trainer.export import ExportedModel, export_classifier
from trainer.fit import EpochReport, FitConfig, FitReport, fit
from trainer.models import SensorCNN
from trainer.publish import publish_version

HOLDOUT_FRACTION = 0.2
BOOTSTRAP_SOURCE = "bootstrap:simulated"


@dataclass(frozen=True)
class TrainedModel:
    model: SensorCNN
    report: FitReport
    exported: ExportedModel


def train_sensor_model(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    config: FitConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> TrainedModel:
    """Fit a SensorCNN on time-ordered windows (the last 20% held out) and export it to ONNX."""
    torch.manual_seed(config.seed)
    split = int(len(x) * (1 - HOLDOUT_FRACTION))
    model = SensorCNN(len(SENSOR_CHANNELS), len(INSULATOR_CLASSES))
    model.fit_normalisation(torch.from_numpy(x[:split]))
    report = fit(
        model, x[:split], y[:split], x[split:], y[split:], len(INSULATOR_CLASSES), config, on_epoch
    )
    exported = export_classifier(model, x[split : split + 64], SENSOR_INPUT_NAME)
    return TrainedModel(model, report, exported)


def bootstrap_sensor(
    settings: TrainerSettings,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> ModelVersion:
    """Train on (x, y) and publish the result as the next champion version of the sensor model."""
    config = FitConfig(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        device=settings.device,
    )
    trained = train_sensor_model(x, y, config, on_epoch)
    name = MODEL_NAMES[MODALITY_SENSOR]
    snapshot = registry.read_snapshot(settings.kafka, settings.kafka.topics.models_registry)
    return publish_version(
        kafka=settings.kafka,
        artifact_root=settings.artifact_root,
        name=name,
        version=snapshot.latest_version(name) + 1,
        modality=MODALITY_SENSOR,
        exported=trained.exported,
        model=trained.model,
        classes=list(INSULATOR_CLASSES),
        metrics={
            "holdout_accuracy": trained.report.holdout_accuracy,
            "holdout_macro_f1": trained.report.holdout_macro_f1,
            "parity_max_abs_diff": trained.exported.parity_max_abs_diff,
            "train_seconds": trained.report.seconds,
            "train_windows": float(int(len(x) * (1 - HOLDOUT_FRACTION))),
        },
        lineage=Lineage(source=BOOTSTRAP_SOURCE, seed=settings.seed),
        status=STATUS_CHAMPION,
    )
