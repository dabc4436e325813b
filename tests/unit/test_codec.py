"""Codecs: every message round-trips through Avro and JSON, and bad bytes become reasons."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.avro import encode_record, schema_names, strip_framing
from driftline.schemas.messages import (
    MESSAGE_TYPES,
    Alert,
    CameraImage,
    DeadLetter,
    DriftSignal,
    FeatureHistogram,
    InferenceResult,
    Label,
    LabelledWindow,
    Lineage,
    Message,
    ModelVersion,
    OffsetRange,
    ReferenceProfile,
    SensorWindow,
    TensorSpec,
)


def sensor_window(event_id: str = "e-1", channels: int = 4, n: int = 64) -> SensorWindow:
    samples = np.arange(channels * n, dtype="<f4").reshape(channels, n) / 7
    return SensorWindow(
        event_id=event_id,
        asset_id="insulator-00001",
        sensor_id="insulator-00001-s0",
        event_time_ms=1_700_000_000_123,
        sample_rate_hz=1.0,
        channels=[f"c{i}" for i in range(channels)],
        n_samples=n,
        samples=samples.tobytes(),
    )


EXAMPLES: list[Message] = [
    sensor_window(),
    CameraImage(
        event_id="e-2",
        asset_id="a",
        camera_id="cam-1",
        event_time_ms=5,
        content_type="image/png",
        image=b"\x89PNG...",
    ),
    InferenceResult(
        event_id="e-3",
        asset_id="a",
        modality="sensor",
        model_name="insulator-sensor",
        model_version=3,
        classes=["healthy", "cracked"],
        probabilities=np.array([0.25, 0.75], dtype="<f4").tobytes(),
        predicted_class="cracked",
        confidence=0.75,
        event_time_ms=1,
        scored_time_ms=2,
    ),
    Label(event_id="e-1", true_class="cracked", source="inspection", label_time_ms=9),
    LabelledWindow(
        event_id="e-1",
        asset_id="a",
        modality="sensor",
        event_time_ms=1,
        label_time_ms=9,
        true_class="cracked",
        input_type="SensorWindow",
        input=b"\x02abc",
        predicted_class="healthy",
        confidence=0.5,
        model_name="insulator-sensor",
        model_version=1,
    ),
    ModelVersion(
        name="insulator-sensor",
        version=2,
        modality="sensor",
        artifact_uri="file:///tmp/m.onnx",
        sha256="ab" * 32,
        inputs=[TensorSpec(name="samples", dtype="float32", shape=[-1, 4, 64])],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=[-1, 4])],
        classes=["healthy", "contaminated", "cracked", "flashover_damaged"],
        metrics={"holdout_macro_f1": 0.93},
        lineage=Lineage(
            source="training.windows",
            ranges=[OffsetRange(partition=0, start_offset=10, end_offset=99)],
            parent_version=1,
            seed=7,
        ),
        status="champion",
        created_time_ms=77,
        signature=b"sig",
        reference=ReferenceProfile(
            count=100,
            features=[FeatureHistogram(name="confidence", edges=[0.5], fractions=[0.2, 0.8])],
        ),
    ),
    DriftSignal(
        model_name="insulator-sensor",
        model_version=2,
        statistic="psi",
        score=0.31,
        threshold=0.25,
        drifted=True,
        window_start_ms=1,
        window_end_ms=2,
        sample_count=500,
        feature_scores={"confidence": 0.31},
        live_accuracy=0.8,
    ),
    Alert(
        alert_id="al-1",
        asset_id="a",
        severity="critical",
        reason="3 of 5 windows cracked",
        predicted_class="cracked",
        evidence_event_ids=["e-1", "e-3"],
        model_name="insulator-sensor",
        model_version=2,
        raised_time_ms=10,
    ),
    DeadLetter(
        source_topic="sensor.windows",
        source_partition=2,
        source_offset=41,
        error_class="undecodable",
        error_message="bad",
        service="inference",
        failed_time_ms=3,
        key=b"k",
        value=b"v",
    ),
]


def test_every_schema_has_a_message_type_and_an_example() -> None:
    assert sorted(t.avro_name for t in MESSAGE_TYPES) == schema_names()
    assert sorted(type(m).avro_name for m in EXAMPLES) == schema_names()


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("ctype", [h.CONTENT_TYPE_AVRO, h.CONTENT_TYPE_JSON])
def test_round_trip(msg: Message, ctype: str) -> None:
    data = codec.encode(msg, content_type=ctype)
    assert codec.decode(type(msg), data, ctype) == msg


def test_confluent_framing_is_understood() -> None:
    msg = EXAMPLES[2]
    framed = codec.encode(msg, schema_id=42)
    assert framed[0] == 0
    schema_id, body = strip_framing(framed)
    assert schema_id == 42
    assert bytes(body) == codec.encode(msg)
    assert codec.decode(InferenceResult, framed) == msg


def test_sensor_samples_are_little_endian_float32_rows() -> None:
    msg = sensor_window()
    arr = msg.array()
    assert arr.shape == (4, 64)
    assert arr.dtype == np.dtype("<f4")
    assert arr[1, 0] == np.float32(64 / 7)


def test_json_sensor_window_may_send_nested_lists() -> None:
    body = msgspec.json.encode(
        {
            "event_id": "j-1",
            "asset_id": "a",
            "sensor_id": "s",
            "event_time_ms": 5,
            "sample_rate_hz": 1.0,
            "channels": ["x", "y"],
            "samples": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]],
        }
    )
    msg = codec.decode(SensorWindow, body, h.CONTENT_TYPE_JSON)
    assert msg.n_samples == 3
    assert msg.array().tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]]


@pytest.mark.parametrize(
    ("data", "ctype", "reason"),
    [
        (None, None, dl.EMPTY_VALUE),
        (b"", h.CONTENT_TYPE_AVRO, dl.EMPTY_VALUE),
        (b"\x02\xff\xff\xff", None, dl.UNDECODABLE),
        (b"{not json", h.CONTENT_TYPE_JSON, dl.UNDECODABLE),
        (b"[1, 2]", h.CONTENT_TYPE_JSON, dl.SCHEMA_INVALID),
        (b'{"event_id": 5}', h.CONTENT_TYPE_JSON, dl.SCHEMA_INVALID),
        (b"abc", "text/csv", dl.UNKNOWN_CONTENT_TYPE),
    ],
)
def test_bad_bytes_become_dead_letter_reasons(
    data: bytes | None, ctype: str | None, reason: str
) -> None:
    with pytest.raises(dl.CodecError) as caught:
        codec.decode(SensorWindow, data, ctype)
    assert caught.value.error_class == reason


def test_trailing_garbage_is_undecodable() -> None:
    data = codec.encode(EXAMPLES[3]) + b"\x00\x01"
    with pytest.raises(dl.CodecError) as caught:
        codec.decode(Label, data)
    assert caught.value.error_class == dl.UNDECODABLE


def test_samples_that_do_not_match_the_declared_shape_are_refused() -> None:
    record = codec.to_record(sensor_window())
    record["n_samples"] = 63
    with pytest.raises(dl.CodecError) as caught:
        codec.decode(SensorWindow, encode_record("SensorWindow", record))
    assert caught.value.error_class == dl.BAD_SHAPE


def test_content_type_header_parsing() -> None:
    assert codec.content_type_of([("content-type", b"Application/JSON; charset=utf-8")]) == (
        h.CONTENT_TYPE_JSON
    )
    assert codec.content_type_of({"content-type": "application/avro"}) == h.CONTENT_TYPE_AVRO
    assert codec.content_type_of(None) is None


def test_dead_letter_headers_round_trip_and_keep_original_headers() -> None:
    letter = dl.dead_letter(
        topic="sensor.windows",
        partition=3,
        offset=99,
        error=dl.CodecError(dl.NON_FINITE, "NaN or infinite sample"),
        service="inference",
        key=b"k",
        value=b"v",
        now_ms=12345,
    )
    hdrs = dl.to_headers(letter, [("content-type", b"application/avro"), ("trace", b"t1")])
    assert hdrs[:2] == [("content-type", b"application/avro"), ("trace", b"t1")]
    assert dl.from_headers(hdrs, b"k", b"v") == letter
