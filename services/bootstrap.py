"""Bootstrap: simulated data joined to the trainer, so a fresh install has models to serve."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from driftline.schemas.contracts import MODEL_NAMES
from driftline.schemas.messages import MODALITY_IMAGE, MODALITY_SENSOR, ModelVersion
from driftline.trainer.settings import TrainerSettings

if TYPE_CHECKING:
    from driftline.trainer.fit import EpochReport
    from driftline.trainer.runs import RunOutcome


class BootstrapFailed(RuntimeError):
    """A bootstrap run published nothing; the message says why."""


def _show_epoch(epochs: int, label: str) -> Callable[[EpochReport], None]:
    def show(rep: EpochReport) -> None:
        sys.stderr.write(
            f"train {label}: epoch {rep.epoch}/{epochs}  loss {rep.loss:.4f}  "
            f"accuracy {rep.train_accuracy:.3f}  ({rep.seconds:.1f}s)\n"
        )

    return show


def bootstrap_model(
    settings: TrainerSettings, modality: str, count: int | None = None
) -> RunOutcome:
    """Simulate labelled data for one modality, then train, gate, export, sign and publish."""
    from driftline.services.simulator.fleet import labelled_dataset
    from driftline.services.simulator.images import labelled_images
    from driftline.trainer.bootstrap import bootstrap, bootstrap_epochs

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
    return bootstrap(
        settings,
        modality,
        x,
        y,
        on_epoch=_show_epoch(bootstrap_epochs(settings, modality), modality),
    )


def _published(outcome: RunOutcome) -> ModelVersion:
    if outcome.version is None:
        raise BootstrapFailed(outcome.summary())
    return outcome.version


def bootstrap_sensor_model(settings: TrainerSettings, windows: int = 8000) -> ModelVersion:
    """Simulate labelled windows and train, export and publish the first sensor model."""
    return _published(bootstrap_model(settings, MODALITY_SENSOR, windows))


def bootstrap_image_model(settings: TrainerSettings, images: int = 8000) -> ModelVersion:
    """Simulate labelled photos and train, export and publish the first image model."""
    return _published(bootstrap_model(settings, MODALITY_IMAGE, images))
