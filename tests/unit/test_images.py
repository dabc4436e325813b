"""Image decoding: good JPEG/PNG become model inputs; hostile or broken images become reasons."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas.messages import CameraImage
from driftline.services.inference.images import decode_image, decode_image_batch

LIMITS = {"max_value_bytes": 1 << 20, "max_image_bytes": 1 << 19, "max_pixels": 2000 * 2000}


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(w: int = 120, h: int = 90, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (200, 30, 30)  # left half red
    return Image.fromarray(arr, "RGB").convert(mode)


def record(image: bytes | None, ctype: str = "image/png", uri: str | None = None) -> bytes:
    return codec.encode(
        CameraImage(
            event_id="e",
            asset_id="a",
            camera_id="c",
            event_time_ms=1,
            content_type=ctype,
            image=image,
            image_uri=uri,
        )
    )


def test_png_and_jpeg_decode_to_resized_rgb() -> None:
    for fmt, ctype in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        arr = decode_image(encode(photo(), fmt), ctype, size=64, max_pixels=10**6)
        assert arr.shape == (64, 64, 3)
        assert arr.dtype == np.uint8
        left = arr[:, :28].reshape(-1, 3).mean(axis=0)
        assert left[0] > 150 > left[1], "the red half stays red after resizing"


def test_greyscale_and_palette_are_converted_to_rgb() -> None:
    for mode in ("L", "P", "RGBA"):
        arr = decode_image(encode(photo(mode=mode), "PNG"), "image/png", size=64, max_pixels=10**6)
        assert arr.shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("data", "ctype", "reason", "match"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", dl.BAD_IMAGE, "corrupt"),
        (encode(photo(), "PNG")[:300], "image/png", dl.BAD_IMAGE, "corrupt"),
        (encode(photo(), "JPEG"), "image/png", dl.BAD_IMAGE, "declared image/png"),
        (encode(photo(), "GIF"), "image/gif", dl.BAD_IMAGE, "not JPEG or PNG"),
        (encode(photo(mode="CMYK"), "JPEG"), "image/jpeg", dl.BAD_IMAGE, "colour mode"),
        (
            encode(Image.new("I;16", (64, 64)), "PNG"),
            "image/png",
            dl.BAD_IMAGE,
            "colour mode",
        ),
    ],
)
def test_broken_or_unexpected_images_are_refused(
    data: bytes, ctype: str, reason: str, match: str
) -> None:
    with pytest.raises(dl.CodecError, match=match) as caught:
        decode_image(data, ctype, size=64, max_pixels=10**6)
    assert caught.value.error_class == reason


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # 10000 x 10000 black PNG: a few KB on the wire, 300 MB once decoded.
    bomb = encode(Image.new("L", (10_000, 10_000)), "PNG", optimize=True)
    assert len(bomb) < 200_000
    with pytest.raises(dl.CodecError, match="exceed") as caught:
        decode_image(bomb, "image/png", size=64, max_pixels=4096 * 4096)
    assert caught.value.error_class == dl.BAD_IMAGE


def test_batch_keeps_good_images_and_names_each_failure() -> None:
    good = record(encode(photo(), "PNG"))
    values: list[bytes | None] = [
        good,
        record(b"not an image"),
        record(None),
        record(encode(photo(1200, 1000), "PNG")),  # over max_image_bytes
        record(None, uri="file:///etc/passwd"),
        b"\x02junk",
        good,
    ]
    batch = decode_image_batch(values, [None] * len(values), **LIMITS)
    assert batch.positions == [0, 6]
    assert batch.inputs.shape == (2, 3, 64, 64)
    assert batch.inputs.dtype == np.float32
    assert batch.inputs.min() >= 0.0
    assert batch.inputs.max() <= 1.0
    reasons = {pos: err.error_class for pos, err in batch.failures}
    assert reasons == {
        1: dl.BAD_IMAGE,
        2: dl.SCHEMA_INVALID,
        3: dl.OVERSIZED,
        4: dl.BAD_IMAGE,
        5: dl.UNDECODABLE,
    }


def test_references_are_read_only_from_allowed_stores(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    (tmp_path / "p.png").write_bytes(encode(photo(), "PNG"))
    uri = (tmp_path / "p.png").as_uri()
    batch = decode_image_batch(
        [record(None, uri=uri)], [None], allowed_uri_prefixes=[tmp_path.as_uri()], **LIMITS
    )
    assert batch.positions == [0]
