"""Photos decoded while the previous chunk is scored: the handler's outcome is the one it has
when it decodes and scores the whole batch one after the other, record for record.

Both paths run the same batches (good JPEG and PNG photos of several sizes, undecodable
records, a photo the model cannot score, one it scores as NaN) through the handler with the
in-memory Delivery, with the clock frozen so that result records can be compared as bytes.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
from confluent_kafka import Message
from PIL import Image
from prometheus_client import CollectorRegistry

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.batch import DecodedBatch
from driftline.schemas.messages import (
    CameraImage,
    InferenceResult,
    Lineage,
    ModelVersion,
    TensorSpec,
)
from driftline.services.core.batching import ChunkPolicy
from driftline.services.inference.handler import InferenceHandler
from driftline.services.inference.inmemory import InMemoryDelivery
from driftline.services.inference.metrics import InferenceMetrics
from driftline.services.inference.service import decoder_for
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.settings import KafkaSettings
from tests.unit.test_inference_handler import Runner, msg, window_bytes
from tests.unit.test_inference_handler import handler as sensor_handler
from tests.unit.test_inference_handler import version as sensor_version

CLASSES = ["healthy", "contaminated", "cracked", "flashover"]
TOPIC = "t1.camera.images"
POISON, NAN = 7, 13  # grey levels of the photos the model cannot score / scores as NaN
SEQUENTIAL = ChunkPolicy(max_chunks=1)
CHUNKED = ChunkPolicy(min_chunk=8, max_chunks=4)


def version(v: int = 3) -> ModelVersion:
    return ModelVersion(
        name="insulator-image",
        version=v,
        modality="image",
        artifact_uri="file:///m.onnx",
        sha256="0" * 64,
        inputs=[TensorSpec(name="image", dtype="float32", shape=[-1, 3, 64, 64])],
        outputs=[],
        classes=CLASSES,
        lineage=Lineage(source="test"),
        status="champion",
        created_time_ms=1,
    )


class PhotoRunner:
    """Scores a photo by its mean brightness; fails on any batch holding the POISON photo and
    scores the NAN photo as NaN. Keeps the size of each batch it was given, and its thread."""

    def __init__(self, mv: ModelVersion) -> None:
        self.version = mv
        self.sizes: list[int] = []
        self.threads: list[int] = []

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.sizes.append(len(batch))
        self.threads.append(threading.get_ident())
        means = batch.mean(axis=(1, 2, 3))
        if np.isclose(means, POISON / 255.0).any():
            raise RuntimeError("this model cannot score that photo")
        logits = np.stack([means * (k + 1) for k in range(len(CLASSES))], axis=1)
        e = np.exp(logits)
        out: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        out[np.isclose(means, NAN / 255.0)] = np.nan
        return out


class Slot:
    def __init__(self, runner: PhotoRunner) -> None:
        self.model: PhotoRunner = runner


def image_bytes(seed: int, fmt: str, w: int = 64, h: int = 64, level: int | None = None) -> bytes:
    """Random pixels, or every pixel at grey `level`."""
    if level is None:
        img = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8))
    else:
        img = Image.new("RGB", (w, h), (level, level, level))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def camera(event_id: str, image: bytes, ctype: str) -> bytes:
    return codec.encode(
        CameraImage(
            event_id=event_id,
            asset_id=f"insulator-{event_id}",
            camera_id="cam-1",
            event_time_ms=1_700_000_000_000,
            content_type=ctype,
            image=image,
        )
    )


def photo_batch(n: int, bad: dict[int, bytes | None], poison: int, nan: int) -> list[Message]:
    """n records: photos (JPEG and PNG, 64x64 and larger ones to resize) except the
    undecodable values in `bad`, the POISON photo at `poison` and the NAN one at `nan`."""
    values: list[bytes | None] = []
    for i in range(n):
        if i in bad:
            values.append(bad[i])
        elif i in (poison, nan):
            level = POISON if i == poison else NAN
            values.append(camera(f"e{i}", image_bytes(i, "PNG", level=level), "image/png"))
        elif i % 3 == 0:
            values.append(camera(f"e{i}", image_bytes(i, "PNG", 96, 80), "image/png"))
        elif i % 5 == 0:
            values.append(camera(f"e{i}", image_bytes(i, "JPEG", 160, 128), "image/jpeg"))
        else:
            values.append(camera(f"e{i}", image_bytes(i, "JPEG"), "image/jpeg"))
    return [
        Message(
            topic=TOPIC,
            partition=i % 2,
            offset=100 + i,
            key=f"insulator-e{i}".encode(),
            value=v,
            headers=list(h.AVRO),
            error=None,
            timestamp=(1, 1_700_000_000_000),
        )
        for i, v in enumerate(values)
    ]


def run(
    chunking: ChunkPolicy, batches: Sequence[list[Message]]
) -> tuple[InMemoryDelivery, list[tuple[int, int, int, int]], PhotoRunner]:
    settings = InferenceSettings(kafka=KafkaSettings(topic_prefix="t1."), modality="image")
    source, decoder = decoder_for(settings)
    mem = InMemoryDelivery()
    runner = PhotoRunner(version())
    metrics = InferenceMetrics(CollectorRegistry())
    hd = InferenceHandler(settings, source, decoder, Slot(runner), metrics, mem, chunking)
    stats = []
    for msgs in batches:
        s = hd.handle(msgs)
        stats.append((s.consumed, s.scored, s.dead_lettered, s.model_version))
    hd.close()
    return mem, stats, runner


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Results carry the time they were scored: frozen, both paths' records are comparable.
    monkeypatch.setattr(time, "time", lambda: 1_700_000_123.456)


def test_chunked_scoring_delivers_byte_identical_results_and_dead_letters() -> None:
    garbage: dict[int, bytes | None] = {
        3: b"\x00not avro",
        12: None,
        13: camera("e13", b"\x89PNG\r\n\x1a\n truncated", "image/png"),
        27: camera("e27", image_bytes(27, "PNG"), "image/jpeg"),  # declared JPEG, is PNG
        40: camera("e40", image_bytes(40, "JPEG", 20, 20), "image/jpeg"),  # too small
    }
    batches = [
        photo_batch(45, garbage, poison=21, nan=33),  # 4 chunks; failures in three of them
        photo_batch(16, {0: None}, poison=9, nan=15),  # 2 chunks
        photo_batch(15, {}, poison=-1, nan=2),  # under two chunks' worth: scored whole
    ]
    seq, seq_stats, seq_runner = run(SEQUENTIAL, batches)
    chunked, chunked_stats, chunked_runner = run(CHUNKED, batches)

    assert chunked.records == seq.records
    assert [[(tp.topic, tp.partition, tp.offset) for tp in c] for c in chunked.commits] == [
        [(tp.topic, tp.partition, tp.offset) for tp in c] for c in seq.commits
    ]
    assert chunked_stats == seq_stats == [(45, 38, 7, 3), (16, 13, 3, 3), (15, 14, 1, 3)]
    dlq = [v for t, _k, v, _h in seq.records if t == "t1.camera.images.dlq"]
    assert len(dlq) == 11
    # The chunked path did score in chunks (of 11 or 12 records less the undecodable ones),
    # away from the handler's thread; the sequential one scored the 40 decoded photos at once.
    assert chunked_runner.sizes[:2] == [10, 9]  # chunk 1 holds the POISON photo: it splits
    assert seq_runner.sizes[0] == 40
    assert chunked_runner.threads[0] != threading.get_ident()
    assert chunked_runner.threads[-1] == threading.get_ident()  # the batch of 15, scored whole


def test_a_batch_is_scored_by_the_model_read_at_its_start_even_if_a_swap_lands_meanwhile() -> None:
    settings = InferenceSettings(kafka=KafkaSettings(topic_prefix="t1."), modality="image")
    source, decode_photos = decoder_for(settings)
    slot = Slot(PhotoRunner(version(3)))
    swapped = PhotoRunner(version(4))

    def decoder(
        values: Sequence[bytes | None], ctypes: Sequence[str | None], shape: tuple[int, ...]
    ) -> DecodedBatch:
        slot.model = swapped  # a swap between two chunks' decoding
        return decode_photos(values, ctypes, shape)

    mem = InMemoryDelivery()
    metrics = InferenceMetrics(CollectorRegistry())
    hd = InferenceHandler(settings, source, decoder, slot, metrics, mem, CHUNKED)
    stats = hd.handle(photo_batch(32, {}, poison=-1, nan=-1))
    hd.close()
    assert stats.model_version == 3
    assert swapped.sizes == []
    results = [codec.decode(InferenceResult, v) for _k, v, _h in mem.on("t1.inference.results")]
    assert len(results) == 32
    assert {r.model_version for r in results} == {3}


def test_sensor_windows_are_still_scored_whole() -> None:
    runner = Runner(sensor_version())
    hd, _ = sensor_handler(runner, InMemoryDelivery())
    stats = hd.handle([msg(i, window_bytes(f"e-{i}", float(i))) for i in range(64)])
    assert (stats.scored, runner.calls) == (64, 1)
