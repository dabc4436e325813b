"""The bench's workload: one modality's model and events, built once for every row of a run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from driftline.schemas import codec
from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES, SENSOR_CHANNELS
from driftline.schemas.messages import (
    MODALITY_IMAGE,
    MODALITY_SENSOR,
    STATUS_CHAMPION,
    CameraImage,
    Lineage,
    ModelVersion,
    SensorWindow,
)
from driftline.schemas.topics import CAMERA_IMAGES, SENSOR_WINDOWS
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import FsspecArtifactStore, sha256_hex
from driftline.services.runtime.settings import KafkaSettings

Say = Callable[[str], None]


@dataclass
class Workload:
    """One modality's bench events (Avro and JSON), their decoded inputs and the model."""

    modality: str
    source_base: str
    keys: list[str]
    event_ids: list[str]
    avro: list[bytes]
    json: list[bytes]
    inputs: npt.NDArray[np.float32]  # decoded, for B0
    onnx: bytes
    classes: list[str]


def sensor_workload(n: int, seed: int, say: Say) -> Workload:
    import torch

    from driftline.services.simulator.fleet import generate_windows, labelled_dataset
    from driftline.trainer.export import export_classifier
    from driftline.trainer.fit import FitConfig, fit
    from driftline.trainer.models import SensorCNN

    say("training the bench sensor model (3 epochs on 6000 simulated windows)")
    torch.manual_seed(seed)
    x, y = labelled_dataset(6000, seed)
    net = SensorCNN(len(SENSOR_CHANNELS), len(INSULATOR_CLASSES))
    net.fit_normalisation(torch.from_numpy(x))
    fit(
        net,
        x[:5000],
        y[:5000],
        x[5000:],
        y[5000:],
        len(INSULATOR_CLASSES),
        FitConfig(epochs=3, seed=seed),
    )
    exported = export_classifier(net, x[:64], "samples")
    rng = np.random.default_rng(seed + 1)
    windows = generate_windows(rng, rng.integers(0, 4, n))
    keys = [f"insulator-{i % 500:05d}" for i in range(n)]
    ids = [f"e{i}" for i in range(n)]
    now = int(time.time() * 1000)
    avro, js = [], []
    for i in range(n):
        msg = SensorWindow(
            event_id=ids[i],
            asset_id=keys[i],
            sensor_id="s0",
            event_time_ms=now,
            sample_rate_hz=1.0,
            channels=list(SENSOR_CHANNELS),
            n_samples=windows.shape[2],
            samples=windows[i].tobytes(),
        )
        avro.append(codec.encode(msg))
        js.append(msgspec.json.encode({**codec.to_record(msg), "samples": windows[i].tolist()}))
    return Workload(
        MODALITY_SENSOR,
        SENSOR_WINDOWS,
        keys,
        ids,
        avro,
        js,
        windows,
        exported.onnx_bytes,
        list(INSULATOR_CLASSES),
    )


def image_workload(n: int, seed: int, say: Say) -> Workload:
    import torch

    from driftline.services.simulator.images import encode_jpeg, generate_images
    from driftline.trainer.export import export_classifier
    from driftline.trainer.models import ImageCNN

    say("building the bench image model (untrained weights: speed does not depend on them)")
    torch.manual_seed(seed)
    net = ImageCNN(len(INSULATOR_CLASSES)).eval()
    rng = np.random.default_rng(seed)
    photos = generate_images(rng, rng.integers(0, 4, n))
    inputs = np.ascontiguousarray(photos.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    exported = export_classifier(net, inputs[:8], "image")
    keys = [f"insulator-{i % 500:05d}" for i in range(n)]
    ids = [f"i{i}" for i in range(n)]
    now = int(time.time() * 1000)
    avro, js = [], []
    for i in range(n):
        msg = CameraImage(
            event_id=ids[i],
            asset_id=keys[i],
            camera_id="cam-1",
            event_time_ms=now,
            content_type="image/jpeg",
            image=encode_jpeg(photos[i]),
        )
        avro.append(codec.encode(msg))
        js.append(codec.encode(msg, content_type="application/json"))
    return Workload(
        MODALITY_IMAGE,
        CAMERA_IMAGES,
        keys,
        ids,
        avro,
        js,
        inputs,
        exported.onnx_bytes,
        list(INSULATOR_CLASSES),
    )


def publish(kafka: KafkaSettings, w: Workload, root: Path, version: int) -> ModelVersion:
    name = MODEL_NAMES[w.modality]
    uri = FsspecArtifactStore(root.as_uri()).put(f"{name}/v{version}/model.onnx", w.onnx)
    mv = ModelVersion(
        name=name,
        version=version,
        modality=w.modality,
        artifact_uri=uri,
        sha256=sha256_hex(w.onnx),
        inputs=[],
        outputs=[],
        classes=w.classes,
        lineage=Lineage(source="bench"),
        status=STATUS_CHAMPION,
        created_time_ms=int(time.time() * 1000),
    )
    registry.publish(kafka, kafka.topics.models_registry, mv)
    return mv


def build(modality: str, n: int, seed: int, say: Say) -> Workload:
    """The workload of a modality: n events and its model."""
    return (sensor_workload if modality == MODALITY_SENSOR else image_workload)(n, seed, say)
