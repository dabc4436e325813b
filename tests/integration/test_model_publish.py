"""A model trained elsewhere is served with one command: `driftline models publish`.

An image classifier exported in the test, with an input size of its own (48 x 40, not the
built-in models' 64 x 64), is published through the CLI: first as a candidate, which no
consumer serves, then signed with `--champion`, which a running consumer that verifies
signatures swaps to and scores photos with, resized to the model's size. Then `models
promote` makes the candidate champion and the consumer follows.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES
from driftline.schemas.messages import (
    STATUS_CHALLENGER,
    STATUS_CHAMPION,
    STATUS_RETIRED,
    CameraImage,
    InferenceResult,
)
from driftline.services.cli import main
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime import registry
from driftline.services.runtime.kafka import (
    DeliveryTracker,
    create_topics,
    flush_or_raise,
    producer,
)
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.signing import generate_keypair
from tests.integration.kafka_io import drain
from tests.integration.test_hot_swap import Serving

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NAME = MODEL_NAMES["image"]
HEIGHT, WIDTH = 48, 40


def export_image_model(path: Path, seed: int) -> None:
    """A tiny untrained CNN taking [batch, 3, 48, 40], exported with torch to `path`."""
    import torch
    from torch import nn

    from driftline.trainer.export import export_classifier

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, len(INSULATOR_CLASSES)),
    ).eval()
    example = np.random.default_rng(seed).random((4, 3, HEIGHT, WIDTH), dtype=np.float32)
    path.write_bytes(export_classifier(net, example, "pixels").onnx_bytes)


def cli(capsys: pytest.CaptureFixture[str], kafka: KafkaSettings, *argv: str) -> str:
    code = main(
        [
            *argv,
            "--bootstrap-servers",
            kafka.bootstrap_servers,
            "--topic-prefix",
            kafka.topic_prefix,
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def send_photos(kafka: KafkaSettings, prefix: str, n: int) -> None:
    prod = producer(kafka)
    tracker = DeliveryTracker()
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (200 + i, 150), color=(90, 60 + i, 30)).save(buf, "PNG")
        value = codec.encode(
            CameraImage(
                event_id=f"{prefix}-{i}",
                asset_id=f"insulator-{i:05d}",
                camera_id="cam-1",
                event_time_ms=int(time.time() * 1000),
                content_type="image/png",
                image=buf.getvalue(),
            )
        )
        prod.produce(
            kafka.topics.camera_images,
            key=f"insulator-{i:05d}".encode(),
            value=value,
            headers=list(h.AVRO),
            on_delivery=tracker,
        )
    flush_or_raise(prod, tracker)


def scored(kafka: KafkaSettings, n: int) -> dict[str, int]:
    """event id -> the model version that scored it, once n results arrived."""
    records = drain(kafka, kafka.topics.inference_results, expect=n)
    results = [codec.decode(InferenceResult, m.value()) for m in records]
    return {r.event_id: r.model_version for r in results}


def test_a_published_onnx_file_is_served_and_a_published_candidate_can_be_promoted(
    kafka: KafkaSettings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create_topics(kafka)
    monkeypatch.setenv("DRIFTLINE_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    private, public = generate_keypair()
    key = tmp_path / "signing.pem"
    key.write_bytes(private)
    candidate, champion = tmp_path / "candidate.onnx", tmp_path / "champion.onnx"
    export_image_model(candidate, seed=1)
    export_image_model(champion, seed=2)

    # A consumer that serves only signed versions, started before any model exists.
    s = Serving(
        InferenceSettings(kafka=kafka, modality="image", max_wait_ms=10, public_key=public.decode())
    )

    def swaps_ok() -> float:
        value = s.metrics.get_sample_value(
            "driftline_model_swaps_total", {"model": NAME, "outcome": "ok", "reason": ""}
        )
        return value or 0.0

    def serving_version() -> float | None:
        return s.metrics.get_sample_value("driftline_model_version", {"model": NAME})

    try:
        out = cli(
            capsys,
            kafka,
            "models",
            "publish",
            str(candidate),
            "--modality",
            "image",
            "--sign-key",
            str(key),
        )
        assert f"published {NAME} v1 as candidate" in out
        snapshot = registry.read_snapshot(kafka, kafka.topics.models_registry)
        assert snapshot.versions[NAME][1].status == STATUS_CHALLENGER
        assert NAME not in snapshot.champions  # a candidate is never served by itself

        out = cli(
            capsys,
            kafka,
            "models",
            "publish",
            str(champion),
            "--modality",
            "image",
            "--sign-key",
            str(key),
            "--champion",
        )
        assert f"published {NAME} v2 as champion" in out
        s.wait_for(lambda: serving_version() == 2, timeout_s=60)
        assert swaps_ok() == 1  # v1, the candidate, was never loaded

        mv = registry.read_snapshot(kafka, kafka.topics.models_registry).champions[NAME]
        assert mv.inputs[0].shape == [-1, 3, HEIGHT, WIDTH]
        assert mv.signature is not None
        assert mv.artifact_uri.startswith((tmp_path / "artifacts").as_uri())
        send_photos(kafka, "first", 5)
        assert set(scored(kafka, 5).values()) == {2}

        out = cli(capsys, kafka, "models", "promote", f"{NAME}/v1")
        assert f"promoted {NAME} v1 (v2 retired)" in out
        s.wait_for(lambda: serving_version() == 1, timeout_s=60)
        send_photos(kafka, "second", 5)
        versions = scored(kafka, 10)
        assert {versions[f"second-{i}"] for i in range(5)} == {1}
    finally:
        s.close()
    snapshot = registry.read_snapshot(kafka, kafka.topics.models_registry)
    assert snapshot.champions[NAME].version == 1
    assert snapshot.versions[NAME][1].status == STATUS_CHAMPION
    assert snapshot.versions[NAME][2].status == STATUS_RETIRED
