"""Labelled windows become training examples, or dead letters with the reason why not."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas.contracts import IMAGE_SIZE, INSULATOR_CLASSES
from driftline.schemas.messages import CameraImage, LabelledWindow, SensorWindow
from driftline.services.simulator.images import encode_jpeg, encode_png, labelled_images
from driftline.trainer.dataset import Example, TrainingBuffer
from driftline.trainer.inputs import decode_labelled, model_input


def sensor_bytes(samples: np.ndarray, json: bool = False) -> bytes:
    window = SensorWindow(
        event_id="e1",
        asset_id="a1",
        sensor_id="s1",
        event_time_ms=1000,
        sample_rate_hz=1.0,
        channels=[f"c{i}" for i in range(samples.shape[0])],
        n_samples=samples.shape[1],
        samples=samples.astype("<f4").tobytes(),
    )
    return codec.encode(window, content_type="application/json" if json else "application/avro")


def camera_bytes(image: bytes | None, uri: str | None = None) -> bytes:
    return codec.encode(
        CameraImage(
            event_id="e2",
            asset_id="a2",
            camera_id="cam",
            event_time_ms=2000,
            content_type="image/png",
            image=image,
            image_uri=uri,
        )
    )


def labelled(
    modality: str, payload: bytes, true_class: str = "cracked", input_type: str | None = None
) -> bytes:
    return codec.encode(
        LabelledWindow(
            event_id="e",
            asset_id="a",
            modality=modality,
            event_time_ms=5,
            label_time_ms=9,
            true_class=true_class,
            input_type=input_type or ("SensorWindow" if modality == "sensor" else "CameraImage"),
            input=payload,
            predicted_class="healthy",
            confidence=0.7,
        )
    )


def test_sensor_and_image_windows_decode_to_model_inputs() -> None:
    samples = np.random.default_rng(0).random((4, 64)).astype(np.float32)
    for payload in (sensor_bytes(samples), sensor_bytes(samples, json=True)):
        got = decode_labelled(labelled("sensor", payload))
        assert got.modality == "sensor"
        assert got.label == INSULATOR_CLASSES.index("cracked")
        assert got.event_time_ms == 5
        assert np.array_equal(got.x, samples)

    photos, _ = labelled_images(2, seed=0)
    png = decode_labelled(labelled("image", camera_bytes(encode_png(photos[0]))))
    assert png.x.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert np.array_equal(png.x, photos[0].transpose(2, 0, 1)), "PNG is lossless"
    jpeg = decode_labelled(labelled("image", camera_bytes(encode_jpeg(photos[1]))))
    assert jpeg.x.dtype == np.uint8
    floats = model_input("image", np.stack([png.x]))
    assert floats.dtype == np.float32
    assert float(floats.max()) <= 1.0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (labelled("sensor", sensor_bytes(np.ones((3, 64)))), dl.BAD_SHAPE),
        (labelled("sensor", sensor_bytes(np.ones((4, 32)))), dl.BAD_SHAPE),
        (labelled("sensor", sensor_bytes(np.full((4, 64), np.nan))), dl.NON_FINITE),
        (labelled("sensor", sensor_bytes(np.ones((4, 64))), "rusty"), dl.UNKNOWN_CLASS),
        (labelled("sensor", b""), dl.MISSING_INPUT),
        (labelled("sensor", b"\x02garbage"), dl.UNDECODABLE),
        (labelled("sensor", camera_bytes(b"x"), input_type="CameraImage"), dl.SCHEMA_INVALID),
        (labelled("lidar", b"x", input_type="SensorWindow"), dl.SCHEMA_INVALID),
        (labelled("image", camera_bytes(None, "s3://b/k.png")), dl.MISSING_INPUT),
        (labelled("image", camera_bytes(b"not a png")), dl.BAD_IMAGE),
        (b"\x00\x01", dl.UNDECODABLE),
        (None, dl.EMPTY_VALUE),
    ],
)
def test_unusable_windows_raise_a_dead_letter_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(dl.CodecError) as caught:
        decode_labelled(value)
    assert caught.value.error_class == reason
    assert caught.value.message


def test_the_buffer_keeps_the_newest_examples_in_time_order() -> None:
    buffer = TrainingBuffer(capacity=10)
    times = np.random.default_rng(1).permutation(40)
    for i, t in enumerate(times.tolist()):
        buffer.add(Example(t, i % 3, i, t % 4, np.full((4, 64), t, dtype=np.float32)))
    assert len(buffer) == 10
    data = buffer.snapshot()
    assert data.event_time_ms.tolist() == list(range(30, 40)), "the oldest are dropped"
    assert np.array_equal(data.x[:, 0, 0], data.event_time_ms.astype(np.float32))
    ranges = {r.partition: (r.start_offset, r.end_offset) for r in data.ranges()}
    for p, (start, end) in ranges.items():
        offs = data.offsets[data.partitions == p]
        assert (start, end) == (offs.min(), offs.max() + 1)
