"""Hostile bytes at every decoder a consumer runs: nothing but a dead-letter reason comes out.

Generated raw bytes, JSON (valid and not, nested deep), mutated Avro records and mutated or
tiny images go to the sensor, image and label decoders, the join's input reader and the
registry-record reader. Each may accept a record or refuse it with a CodecError; any other
exception would stop a partition on a record that comes back after every restart.

Bounded for CI (DRIFTLINE_FUZZ_EXAMPLES, 150 per target by default); scripts/fuzz runs it
longer.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.contracts import SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.schemas.messages import (
    CameraImage,
    InferenceResult,
    Label,
    LabelledWindow,
    Message,
    ModelVersion,
    SensorWindow,
)
from driftline.schemas.sensor_batch import decode_sensor_batch
from driftline.services.core.join import label_problem
from driftline.services.features import joinrecords as jr
from driftline.services.inference.images import decode_image_batch
from driftline.services.runtime.registry import RegistrySnapshot

EXAMPLES = int(os.environ.get("DRIFTLINE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("DRIFTLINE_FUZZ_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
CONTENT_TYPES = st.sampled_from([None, h.CONTENT_TYPE_AVRO, h.CONTENT_TYPE_JSON, "text/x-nope"])


def _window() -> SensorWindow:
    samples = np.zeros((len(SENSOR_CHANNELS), SENSOR_SAMPLES), dtype="<f4")
    return SensorWindow(
        event_id="e-1",
        asset_id="ins-1",
        sensor_id="s-1",
        event_time_ms=1_700_000_000_000,
        sample_rate_hz=1.0,
        channels=list(SENSOR_CHANNELS),
        n_samples=SENSOR_SAMPLES,
        samples=samples.tobytes(),
    )


def _png(w: int, h_: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h_)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(w: int, h_: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h_), (90, 120, 150)).save(buf, format="JPEG")
    return buf.getvalue()


def _photo(data: bytes, content_type: str = "image/png") -> CameraImage:
    return CameraImage(
        event_id="p-1",
        asset_id="ins-1",
        camera_id="c-1",
        event_time_ms=1_700_000_000_000,
        content_type=content_type,
        image=data,
    )


SEEDS: dict[str, bytes] = {
    "sensor": codec.encode(_window()),
    "image": codec.encode(_photo(_png(64, 64))),
    "label": codec.encode(
        Label(
            event_id="e-1",
            asset_id="ins-1",
            true_class="healthy",
            source="inspection",
            label_time_ms=1_700_000_100_000,
        )
    ),
}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """A valid record with bytes flipped, cut, inserted or repeated."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 32))] * draw(st.integers(1, 8))
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
FIELDS = [
    "event_id",
    "asset_id",
    "event_time_ms",
    "channels",
    "n_samples",
    "samples",
    "image",
    "image_uri",
    "content_type",
    "true_class",
    "source",
    "label_time_ms",
    "inspection_time_ms",
    "lookback_ms",
    "sensor_id",
    "camera_id",
    "sample_rate_hz",
]


@st.composite
def json_records(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0:  # nesting deep enough to exhaust a recursive decoder
        depth = draw(st.integers(1_000, 200_000))
        field = draw(st.sampled_from(FIELDS))
        return b'{"' + field.encode() + b'":' + b"[" * depth + b"]" * depth + b"}"
    if choice == 1:  # the right field names, any values
        record = {f: draw(JSON_VALUES) for f in draw(st.lists(st.sampled_from(FIELDS)))}
        return json.dumps(record).encode()
    if choice == 2:
        return json.dumps(draw(JSON_VALUES)).encode()
    return draw(st.binary(max_size=64))


def hostile(seed: str) -> st.SearchStrategy[bytes | None]:
    return st.one_of(
        st.none(),
        st.binary(max_size=256),
        json_records(),
        mutated(SEEDS[seed]),
    )


def _only_codec_errors(kind: type[Message], value: bytes | None, ctype: str | None) -> None:
    reason = None
    try:
        codec.decode(kind, value, ctype)
    except dl.CodecError as exc:
        reason = exc.error_class
    assert reason is None or reason in dl.REASONS, reason


@pytest.mark.parametrize(
    "kind", [SensorWindow, CameraImage, Label, InferenceResult, LabelledWindow, ModelVersion]
)
@FUZZ
@given(data=st.data())
def test_codec_decode_refuses_hostile_records_with_a_reason(
    kind: type[Message], data: st.DataObject
) -> None:
    seed = {SensorWindow: "sensor", CameraImage: "image"}.get(kind, "label")
    value = data.draw(hostile(seed))
    _only_codec_errors(kind, value, data.draw(CONTENT_TYPES))


@FUZZ
@given(values=st.lists(hostile("sensor"), min_size=1, max_size=6), data=st.data())
def test_the_sensor_batch_decoder_dead_letters_each_hostile_record(
    values: list[bytes | None], data: st.DataObject
) -> None:
    values = [SEEDS["sensor"], *values]
    ctypes = [data.draw(CONTENT_TYPES) for _ in values]
    ctypes[0] = None
    batch = decode_sensor_batch(
        values,
        ctypes,
        channels=len(SENSOR_CHANNELS),
        n_samples=SENSOR_SAMPLES,
        channel_names=SENSOR_CHANNELS,
    )
    # Every record is accounted for exactly once: scored or dead-lettered.
    failed = [pos for pos, _ in batch.failures]
    assert sorted(batch.positions + failed) == list(range(len(values)))
    assert 0 in batch.positions
    # The byte-slicing fast path decides every record exactly as fastavro alone does.
    general = decode_sensor_batch(
        values, ctypes, channels=len(SENSOR_CHANNELS), n_samples=SENSOR_SAMPLES
    )
    assert batch.positions == general.positions
    assert (batch.event_ids, batch.asset_ids) == (general.event_ids, general.asset_ids)
    assert batch.event_time_ms.tolist() == general.event_time_ms.tolist()
    assert np.array_equal(batch.inputs, general.inputs, equal_nan=True)
    assert [(pos, e.error_class) for pos, e in batch.failures] == [
        (pos, e.error_class) for pos, e in general.failures
    ]


IMAGE_BYTES = st.one_of(
    st.binary(max_size=512),
    mutated(_png(64, 64)),
    mutated(_jpeg(64, 64)),
    st.builds(_png, st.integers(1, 40), st.integers(1, 40)),
    st.builds(_png, st.just(64), st.just(64), st.sampled_from(["1", "I;16", "LA", "P", "L"])),
)


@FUZZ
@given(
    photos=st.lists(
        st.tuples(IMAGE_BYTES, st.sampled_from(["image/png", "image/jpeg", "x/y"])),
        min_size=1,
        max_size=4,
    ),
    records=st.lists(hostile("image"), max_size=3),
)
def test_the_image_batch_decoder_dead_letters_each_hostile_photo(
    photos: list[tuple[bytes, str]], records: list[bytes | None]
) -> None:
    values = [SEEDS["image"], *(codec.encode(_photo(b, c)) for b, c in photos), *records]
    batch = decode_image_batch(
        values,
        [None] * len(values),
        max_value_bytes=1 << 20,
        max_image_bytes=1 << 20,
        max_pixels=1 << 22,
    )
    failed = [pos for pos, _ in batch.failures]
    assert sorted(batch.positions + failed) == list(range(len(values)))
    assert 0 in batch.positions


def test_a_photo_too_small_to_inspect_is_dead_lettered() -> None:
    for tiny, ctype in (
        (_png(1, 1), "image/png"),
        (_png(8, 200), "image/png"),
        (_jpeg(31, 64), "image/jpeg"),
    ):
        batch = decode_image_batch(
            [codec.encode(_photo(tiny, ctype))],
            [None],
            max_value_bytes=1 << 20,
            max_image_bytes=1 << 20,
            max_pixels=1 << 22,
        )
        assert batch.positions == []
        [(_, error)] = batch.failures
        assert error.error_class == dl.BAD_IMAGE
        assert "at least" in str(error)


def test_json_nested_past_the_recursion_limit_is_a_dead_letter_not_a_crash() -> None:
    deep = b'{"samples":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for kind in (SensorWindow, Label, CameraImage):
        with pytest.raises(dl.CodecError) as info:
            codec.decode(kind, deep, h.CONTENT_TYPE_JSON)
        assert info.value.error_class == dl.UNDECODABLE
        assert "RecursionError" in str(info.value)
    batch = decode_sensor_batch(
        [deep],
        [h.CONTENT_TYPE_JSON],
        channels=len(SENSOR_CHANNELS),
        n_samples=SENSOR_SAMPLES,
    )
    assert batch.positions == []
    assert len(batch.failures) == 1


@FUZZ
@given(value=hostile("label"), ctype=CONTENT_TYPES)
def test_labels_decode_and_validate_or_are_refused(value: bytes | None, ctype: str | None) -> None:
    try:
        label = codec.decode(Label, value, ctype)
    except dl.CodecError:
        return
    problem = label_problem(label)
    assert problem is None or isinstance(problem, str)


@FUZZ
@given(
    value=hostile("sensor"),
    ctype=CONTENT_TYPES,
    input_type=st.sampled_from(["SensorWindow", "CameraImage"]),
)
def test_the_join_input_reader_refuses_hostile_inputs_with_a_reason(
    value: bytes | None, ctype: str | None, input_type: str
) -> None:
    with contextlib.suppress(dl.CodecError):
        jr.stored_input(input_type, value, ctype)


@FUZZ
@given(
    records=st.lists(
        st.tuples(
            st.one_of(
                st.none(),
                st.sampled_from(["insulator-sensor", "insulator-sensor/v3"]),
                st.text(max_size=20),
            ),
            hostile("label"),
        ),
        max_size=8,
    )
)
def test_the_registry_reader_counts_hostile_records_as_invalid(
    records: list[tuple[str | None, bytes | None]],
) -> None:
    snapshot = RegistrySnapshot()
    for key, value in records:
        snapshot.apply(key, value)
    assert snapshot.invalid <= len(records)
