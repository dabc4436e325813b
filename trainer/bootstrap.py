"""Bootstrap: train the first version of each model on simulated data, so a fresh install scores.

The data comes in as arrays (the composition root in services.bootstrap draws it from the
simulator; the trainer never imports the simulator). A bootstrap run is an ordinary training
run: the same split, export checks, gate, signing and publish order as retraining.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from driftline.schemas.contracts import INSULATOR_CLASSES, SENSOR_CHANNELS, SENSOR_INPUT_NAME
from driftline.schemas.messages import MODALITY_IMAGE, MODALITY_SENSOR
from driftline.services.runtime.artifacts import FsspecArtifactStore
from driftline.trainer.dataset import LabelledSet
from driftline.trainer.export import ExportedModel, export_classifier
from driftline.trainer.fit import EpochReport, FitConfig, FitReport, fit
from driftline.trainer.inputs import decode_image
from driftline.trainer.models import SensorCNN
from driftline.trainer.publish import KafkaRegistryWriter, RegistryWriter
from driftline.trainer.runs import RunOutcome, TrainingRun
from driftline.trainer.settings import TrainerSettings

HOLDOUT_FRACTION = 0.2
BOOTSTRAP_SOURCE = "bootstrap:simulated"
TRIGGER_BOOTSTRAP = "bootstrap"
# The JPEG quality inspection cameras send (the simulator's encode_jpeg default).
CAMERA_JPEG_QUALITY = 90


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
    """Fit a SensorCNN on time-ordered windows (the last 20% held out) and export it to ONNX.

    No gate and no publishing: for tests and benchmarks that need a served model quickly.
    """
    torch.manual_seed(config.seed)
    split = int(len(x) * (1 - HOLDOUT_FRACTION))
    model = SensorCNN(len(SENSOR_CHANNELS), len(INSULATOR_CLASSES))
    model.fit_normalisation(torch.from_numpy(x[:split]))
    report = fit(
        model, x[:split], y[:split], x[split:], y[split:], len(INSULATOR_CLASSES), config, on_epoch
    )
    exported = export_classifier(model, x[split : split + 64], SENSOR_INPUT_NAME)
    return TrainedModel(model, report, exported)


def bootstrap_epochs(settings: TrainerSettings, modality: str) -> int:
    """Epochs of a bootstrap run: from scratch on a few thousand photos the image CNN needs
    more passes than a warm-started retrain, which keeps `epochs`."""
    return settings.bootstrap_image_epochs if modality == MODALITY_IMAGE else settings.epochs


def as_served(
    photos: npt.NDArray[np.uint8], quality: int = CAMERA_JPEG_QUALITY
) -> npt.NDArray[np.uint8]:
    """Photos [N, H, W, 3] as the models see them in service, [N, 3, H, W]: JPEG-encoded the
    way cameras send them and decoded the way inference and retraining decode them.

    Training on the raw renders would teach the CNN pixel detail (thin cracks, sensor noise)
    that compression smears before any served photo reaches it.
    """
    from PIL import Image

    out = np.empty((len(photos), photos.shape[3], photos.shape[1], photos.shape[2]), np.uint8)
    for i, photo in enumerate(photos):
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(photo)).save(buffer, format="JPEG", quality=quality)
        out[i] = decode_image(buffer.getvalue())
    return out


def bootstrap(
    settings: TrainerSettings,
    modality: str,
    x: npt.NDArray[np.float32] | npt.NDArray[np.uint8],
    y: npt.NDArray[np.int64],
    on_epoch: Callable[[EpochReport], None] | None = None,
    registry: RegistryWriter | None = None,
) -> RunOutcome:
    """Train on simulated (x, y) and publish: champion if it passes the gate, else rejected.

    Sensor x is float32 [N, channels, samples]; image x is uint8 photos [N, H, W, 3], trained
    on as served (as_served).
    """
    if modality == MODALITY_IMAGE:
        x = as_served(np.asarray(x, dtype=np.uint8))
        settings = settings.model_copy(update={"epochs": bootstrap_epochs(settings, modality)})
    elif modality != MODALITY_SENSOR:
        raise ValueError(f"no model for modality {modality!r}")
    runner = TrainingRun(
        settings,
        registry or KafkaRegistryWriter(settings.kafka, settings.registry_timeout_s),
        FsspecArtifactStore(settings.artifact_root),
    )
    return runner.run(
        modality,
        LabelledSet.from_arrays(x, y),
        source=BOOTSTRAP_SOURCE,
        trigger=TRIGGER_BOOTSTRAP,
        on_epoch=on_epoch,
        record_offsets=False,
    )
