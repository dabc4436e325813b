"""Camera images through the real broker: scored when sound, dead-lettered when hostile."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.contracts import (
    IMAGE_CHANNELS,
    IMAGE_INPUT_NAME,
    IMAGE_SIZE,
    INSULATOR_CLASSES,
    MODEL_NAMES,
)
from driftline.schemas.messages import (
    STATUS_CHAMPION,
    CameraImage,
    InferenceResult,
    Lineage,
    ModelVersion,
)
from driftline.services.inference import service
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import FsspecArtifactStore, sha256_hex
from driftline.services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.shutdown import StopFlag
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def image_champion(kafka: KafkaSettings, tmp_path: Path) -> ModelVersion:
    """A tiny untrained image CNN, exported by the trainer's exporter and published as v1."""
    import torch
    from torch import nn

    from driftline.trainer.export import export_classifier

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(IMAGE_CHANNELS, 4, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, len(INSULATOR_CLASSES)),
    ).eval()
    example = np.random.default_rng(0).random((4, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    exported = export_classifier(net, example, IMAGE_INPUT_NAME)
    name = MODEL_NAMES["image"]
    uri = FsspecArtifactStore(tmp_path.as_uri()).put(f"{name}/v1/model.onnx", exported.onnx_bytes)
    mv = ModelVersion(
        name=name,
        version=1,
        modality="image",
        artifact_uri=uri,
        sha256=sha256_hex(exported.onnx_bytes),
        inputs=exported.inputs,
        outputs=exported.outputs,
        classes=list(INSULATOR_CLASSES),
        lineage=Lineage(source="test"),
        status=STATUS_CHAMPION,
        created_time_ms=int(time.time() * 1000),
    )
    registry.publish(kafka, kafka.topics.models_registry, mv)
    return mv


@pytest.fixture
def image_consumer(
    kafka: KafkaSettings,
    image_champion: ModelVersion,  # noqa: ARG001  (published first; marks cannot apply to fixtures)
) -> Iterator[None]:
    stop = StopFlag()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            service.run(InferenceSettings(kafka=kafka, modality="image", max_wait_ms=10), stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=30)
    assert not errors, errors


def png(w: int, h: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color=90 if mode == "L" else (90, 60, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.usefixtures("image_consumer")
def test_images_are_scored_and_hostile_ones_dead_lettered(
    kafka: KafkaSettings,
) -> None:
    def camera(event_id: str, data: bytes, ctype: str = "image/png") -> bytes:
        return codec.encode(
            CameraImage(
                event_id=event_id,
                asset_id="insulator-00001",
                camera_id="cam-7",
                event_time_ms=int(time.time() * 1000),
                content_type=ctype,
                image=data,
            )
        )

    bomb = png(10_000, 10_000, "L")
    sends = [
        (camera("ok-rgb", png(200, 150)), None),
        (camera("bomb", bomb), dl.BAD_IMAGE),
        (camera("truncated", png(200, 150)[:200]), dl.BAD_IMAGE),
        (camera("ok-grey", png(64, 64, "L")), None),
        (camera("wrong-type", png(32, 32), "image/jpeg"), dl.BAD_IMAGE),
        (b"\x02\x03", dl.UNDECODABLE),
        (camera("ok-big", png(640, 480)), None),
    ]
    prod = producer(kafka)
    tracker = DeliveryTracker()
    for value, _ in sends:
        prod.produce(
            kafka.topics.camera_images,
            key=b"insulator-00001",
            value=value,
            headers=[(h.CONTENT_TYPE, b"application/avro")],
            on_delivery=tracker,
        )
    flush_or_raise(prod, tracker)
    results = drain(kafka, kafka.topics.inference_results, expect=3)
    decoded = [codec.decode(InferenceResult, m.value()) for m in results]
    assert sorted(r.event_id for r in decoded) == ["ok-big", "ok-grey", "ok-rgb"]
    assert {(r.modality, r.model_name, r.model_version) for r in decoded} == {
        ("image", "insulator-image", 1)
    }
    letters = drain(kafka, kafka.topics.dlq("camera.images"), expect=4)
    reasons = sorted(dl.from_headers(m.headers(), None, None).error_class for m in letters)
    assert reasons == sorted(r for _, r in sends if r is not None)
