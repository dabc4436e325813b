"""Decode camera.images records into the image model's input, refusing hostile images.

Guards: a byte limit per image, a pixel limit checked from the header before any pixel is
decoded (decompression bombs), JPEG or PNG only and matching the declared content type,
known colour modes only (greyscale and palette are converted to RGB, others refused), and
truncated or corrupt files. Each refusal is a dead-letter reason, never an exception.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import fsspec
import numpy as np
import numpy.typing as npt
from PIL import Image

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas.batch import DecodedBatch
from driftline.schemas.contracts import IMAGE_CHANNELS, IMAGE_SIZE
from driftline.schemas.messages import CameraImage

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}
CONVERTIBLE_MODES = {"RGB", "L", "P", "RGBA", "LA"}
# A photo with a side under this many pixels holds nothing an inspection could judge (a 1x1
# PNG, a thumbnail of a thumbnail): it is dead-lettered, not scored as if it were a photo.
MIN_IMAGE_SIDE = 32


def _fetch(uri: str, allowed_prefixes: Sequence[str], max_bytes: int) -> bytes:
    if not any(uri.startswith(p) for p in allowed_prefixes):
        raise dl.CodecError(dl.BAD_IMAGE, f"image reference {uri!r} is outside the allowed stores")
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        size = fs.size(path)
        if size is not None and size > max_bytes:
            raise dl.CodecError(dl.OVERSIZED, f"referenced image is {size} bytes > {max_bytes}")
        with fs.open(path, "rb") as src:
            data: bytes = src.read(max_bytes + 1)
    except (OSError, ValueError) as exc:
        raise dl.CodecError(dl.BAD_IMAGE, f"cannot read image reference {uri!r}: {exc}") from exc
    if len(data) > max_bytes:
        raise dl.CodecError(dl.OVERSIZED, f"referenced image is over {max_bytes} bytes")
    return data


def _sides(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a target size given as one side or as both."""
    return (size, size) if isinstance(size, int) else size


def decode_image(
    data: bytes, content_type: str, *, size: int | tuple[int, int] = IMAGE_SIZE, max_pixels: int
) -> npt.NDArray[np.uint8]:
    """One photo as uint8 [height, width, 3] RGB, resized to `size` (one side, or (height,
    width): the serving model's own input size); raises CodecError with a dead-letter reason."""
    height_out, width_out = _sides(size)
    expected = FORMATS.get(content_type.lower())
    if expected is None:
        raise dl.CodecError(dl.BAD_IMAGE, f"content type {content_type!r} is not JPEG or PNG")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            if img.format != expected:
                raise dl.CodecError(
                    dl.BAD_IMAGE, f"declared {content_type} but the bytes are {img.format}"
                )
            width, height = img.size
            if min(width, height) < MIN_IMAGE_SIDE:
                raise dl.CodecError(
                    dl.BAD_IMAGE,
                    f"{width}x{height} pixels: a photo needs at least {MIN_IMAGE_SIDE} a side",
                )
            if width * height > max_pixels:
                raise dl.CodecError(
                    dl.BAD_IMAGE, f"{width}x{height} pixels exceed the limit of {max_pixels}"
                )
            if img.mode not in CONVERTIBLE_MODES:
                raise dl.CodecError(dl.BAD_IMAGE, f"unsupported colour mode {img.mode}")
            if img.format == "JPEG" and width >= 2 * width_out and height >= 2 * height_out:
                img.draft("RGB", (width_out, height_out))  # decode at 1/2, 1/4 or 1/8 scale
            img.load()
            # A photo already in RGB at the model's size is used as decoded: convert and
            # resize would each return a copy of it (about 10 us of a 64x64 JPEG's 100).
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            if rgb.size != (width_out, height_out):
                rgb = rgb.resize((width_out, height_out), Image.Resampling.BILINEAR)
            array = np.asarray(rgb, dtype=np.uint8)
    except dl.CodecError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Warning) as exc:
        raise dl.CodecError(dl.BAD_IMAGE, f"corrupt or truncated image: {exc}") from exc
    except Exception as exc:  # whatever else a hostile file makes Pillow raise
        raise dl.CodecError(
            dl.BAD_IMAGE, f"undecodable image: {type(exc).__name__}: {exc}"
        ) from exc
    if array.shape != (height_out, width_out, IMAGE_CHANNELS):
        raise dl.CodecError(dl.BAD_IMAGE, f"decoded to shape {array.shape}")
    return array


def decode_image_batch(
    values: Sequence[bytes | None],
    content_types: Sequence[str | None],
    *,
    max_value_bytes: int,
    max_image_bytes: int,
    max_pixels: int,
    allowed_uri_prefixes: Sequence[str] = (),
    size: int | tuple[int, int] = IMAGE_SIZE,
) -> DecodedBatch:
    """Decode CameraImage records into float32 [N, 3, height, width] in 0..1, plus failures."""
    height, width = _sides(size)
    positions: list[int] = []
    event_ids: list[str] = []
    asset_ids: list[str] = []
    times: list[int] = []
    pixels: list[npt.NDArray[np.uint8]] = []
    failures: list[tuple[int, dl.CodecError]] = []
    for pos, (value, ctype) in enumerate(zip(values, content_types, strict=True)):
        try:
            if value is not None and len(value) > max_value_bytes:
                raise dl.CodecError(dl.OVERSIZED, f"{len(value)} bytes > limit {max_value_bytes}")
            msg = codec.decode(CameraImage, value, ctype)
            if msg.image is not None:
                if len(msg.image) > max_image_bytes:
                    raise dl.CodecError(
                        dl.OVERSIZED, f"image is {len(msg.image)} bytes > {max_image_bytes}"
                    )
                data = msg.image
            elif msg.image_uri:
                data = _fetch(msg.image_uri, allowed_uri_prefixes, max_image_bytes)
            else:
                raise dl.CodecError(dl.SCHEMA_INVALID, "neither image nor image_uri is set")
            pixels.append(decode_image(data, msg.content_type, size=size, max_pixels=max_pixels))
        except dl.CodecError as exc:
            failures.append((pos, exc))
            continue
        except Exception as exc:  # the unforeseen dead-letters the record, never the partition
            failures.append((pos, dl.CodecError(dl.BAD_IMAGE, f"{type(exc).__name__}: {exc}")))
            continue
        positions.append(pos)
        event_ids.append(msg.event_id)
        asset_ids.append(msg.asset_id)
        times.append(msg.event_time_ms)
    stacked = (
        np.stack(pixels) if pixels else np.zeros((0, height, width, IMAGE_CHANNELS), dtype=np.uint8)
    )
    # One vectorised conversion for the whole batch: NHWC uint8 -> NCHW float32 in 0..1.
    inputs = np.ascontiguousarray(stacked.transpose(0, 3, 1, 2), dtype=np.float32)
    inputs *= np.float32(1.0 / 255.0)
    return DecodedBatch(
        positions=positions,
        event_ids=event_ids,
        asset_ids=asset_ids,
        event_time_ms=np.asarray(times, dtype=np.int64),
        inputs=inputs,
        failures=failures,
    )
