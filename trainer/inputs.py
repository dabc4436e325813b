"""Decode a LabelledWindow into a training example, or a dead-letter reason saying why not.

A labelled window carries the original input bytes (a SensorWindow or a CameraImage record, in
Avro or, from simple producers, JSON), its true class and the prediction served at the time.
Anything the models cannot learn from becomes a CodecError with a bounded reason code:
schema_invalid, unknown_class, missing_input, bad_shape, non_finite or bad_image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.contracts import (
    IMAGE_CHANNELS,
    IMAGE_SIZE,
    INSULATOR_CLASSES,
    SENSOR_CHANNELS,
    SENSOR_SAMPLES,
)
from driftline.schemas.messages import (
    MODALITY_IMAGE,
    MODALITY_SENSOR,
    CameraImage,
    LabelledWindow,
    Message,
    SensorWindow,
)

INPUT_TYPES: dict[str, str] = {MODALITY_SENSOR: "SensorWindow", MODALITY_IMAGE: "CameraImage"}
MAX_IMAGE_PIXELS = 40_000_000
CLASS_INDEX = {name: i for i, name in enumerate(INSULATOR_CLASSES)}


@dataclass(frozen=True)
class LabelledInput:
    """One decoded example: sensor float32 [channels, samples] or image uint8 [3, H, W]."""

    modality: str
    event_id: str
    event_time_ms: int
    label: int
    x: npt.NDArray[np.float32] | npt.NDArray[np.uint8]
    # The prediction served for this event, when the join had it: which version, and whether
    # it was right (what the trainer's change-point detection reads).
    served_version: int | None = None
    served_correct: bool | None = None


def _decode_inner(kind: type[Message], data: bytes) -> Message:
    """The original input: Avro by default, JSON when it is a JSON object."""
    content_type = h.CONTENT_TYPE_JSON if data[:1] == b"{" else h.CONTENT_TYPE_AVRO
    try:
        return codec.decode(kind, data, content_type)
    except dl.CodecError as exc:
        raise dl.CodecError(exc.error_class, f"input {kind.avro_name}: {exc.message}") from exc


def decode_image(data: bytes) -> npt.NDArray[np.uint8]:
    """JPEG/PNG bytes to uint8 [3, IMAGE_SIZE, IMAGE_SIZE] RGB (resized when needed)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise dl.CodecError(dl.BAD_IMAGE, f"image is {img.width}x{img.height}; too large")
            rgb = img.convert("RGB")
            if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
                rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            array = np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise dl.CodecError(dl.BAD_IMAGE, f"not a decodable image: {exc}") from exc
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _sensor_input(data: bytes) -> npt.NDArray[np.float32]:
    window = _decode_inner(SensorWindow, data)
    assert isinstance(window, SensorWindow)
    if len(window.channels) != len(SENSOR_CHANNELS) or window.n_samples != SENSOR_SAMPLES:
        raise dl.CodecError(
            dl.BAD_SHAPE,
            f"window is {len(window.channels)}x{window.n_samples}, "
            f"the sensor model expects {len(SENSOR_CHANNELS)}x{SENSOR_SAMPLES}",
        )
    x = window.array().copy()
    if not np.isfinite(x).all():
        raise dl.CodecError(dl.NON_FINITE, "NaN or infinite sample")
    return x


def _image_input(data: bytes) -> npt.NDArray[np.uint8]:
    photo = _decode_inner(CameraImage, data)
    assert isinstance(photo, CameraImage)
    if not photo.image:
        where = f" (only a reference: {photo.image_uri})" if photo.image_uri else ""
        raise dl.CodecError(dl.MISSING_INPUT, f"camera image has no inline bytes{where}")
    x = decode_image(photo.image)
    if x.shape != (IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE):
        raise dl.CodecError(dl.BAD_SHAPE, f"image decoded to {list(x.shape)}")
    return x


def decode_labelled(value: bytes | None, content_type: str | None = None) -> LabelledInput:
    """The example a LabelledWindow record holds; raises CodecError (a DLQ reason) if unusable."""
    lw = codec.decode(LabelledWindow, value, content_type)
    expected_type = INPUT_TYPES.get(lw.modality)
    if expected_type is None:
        raise dl.CodecError(dl.SCHEMA_INVALID, f"unknown modality {lw.modality!r}")
    label = CLASS_INDEX.get(lw.true_class)
    if label is None:
        raise dl.CodecError(
            dl.UNKNOWN_CLASS, f"true class {lw.true_class!r} is not one of {INSULATOR_CLASSES}"
        )
    if lw.input_type != expected_type:
        raise dl.CodecError(
            dl.SCHEMA_INVALID,
            f"a {lw.modality} window must carry a {expected_type}, not {lw.input_type!r}",
        )
    if not lw.input:
        raise dl.CodecError(dl.MISSING_INPUT, "labelled window carries no input bytes")
    x = _sensor_input(lw.input) if lw.modality == MODALITY_SENSOR else _image_input(lw.input)
    served = lw.predicted_class is not None and lw.model_version is not None
    return LabelledInput(
        lw.modality,
        lw.event_id,
        lw.event_time_ms,
        label,
        x,
        served_version=lw.model_version if served else None,
        served_correct=(lw.predicted_class == lw.true_class) if served else None,
    )


def model_input(
    modality: str, x: npt.NDArray[np.float32] | npt.NDArray[np.uint8]
) -> npt.NDArray[np.float32]:
    """A stacked batch as the model takes it: sensors unchanged, images uint8 -> float 0..1."""
    if modality == MODALITY_IMAGE:
        return (x.astype(np.float32) / np.float32(255.0)).astype(np.float32, copy=False)
    return np.ascontiguousarray(x, dtype=np.float32)
