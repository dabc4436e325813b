"""Batch decoding: one float32 array for the good records, a reason for each bad one."""

from __future__ import annotations

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.avro import encode_record
from driftline.schemas.messages import SensorWindow
from driftline.schemas.sensor_batch import decode_sensor_batch
from tests.unit.test_codec import sensor_window

C, S = 4, 64


def good(i: int) -> bytes:
    return codec.encode(sensor_window(f"e-{i}"))


def with_samples(samples: np.ndarray, event_id: str = "bad") -> bytes:
    record = codec.to_record(sensor_window(event_id))
    record["samples"] = samples.astype("<f4").tobytes()
    return encode_record("SensorWindow", record)


def test_good_batch_matches_per_message_decode() -> None:
    rng = np.random.default_rng(1)
    msgs = []
    for i in range(50):
        arr = rng.normal(size=(C, S)).astype("<f4")
        record = codec.to_record(sensor_window(f"e-{i}"))
        record["samples"] = arr.tobytes()
        record["asset_id"] = f"a-{i % 7}"
        msgs.append(encode_record("SensorWindow", record))
    batch = decode_sensor_batch(msgs, [None] * len(msgs), channels=C, n_samples=S)
    assert batch.failures == []
    assert batch.inputs.shape == (50, C, S)
    oracle = np.stack([codec.decode(SensorWindow, m).array() for m in msgs])
    np.testing.assert_array_equal(batch.inputs, oracle)
    assert batch.event_ids == [f"e-{i}" for i in range(50)]
    assert batch.asset_ids == [f"a-{i % 7}" for i in range(50)]
    assert batch.positions == list(range(50))


def test_bad_records_are_separated_with_reasons_and_positions() -> None:
    nan = np.zeros((C, S))
    nan[2, 5] = np.nan
    inf = np.zeros((C, S))
    inf[0, 0] = np.inf
    json_ok = msgspec.json.encode(
        {
            "event_id": "j",
            "asset_id": "a",
            "sensor_id": "s",
            "event_time_ms": 1,
            "sample_rate_hz": 1.0,
            "channels": list("abcd"),
            "samples": np.ones((C, S)).tolist(),
        }
    )
    values: list[bytes | None] = [
        good(0),  # 0 ok
        b"\x02garbage",  # 1 undecodable
        None,  # 2 tombstone
        with_samples(nan),  # 3 NaN
        codec.encode(sensor_window("short", n=32)),  # 4 wrong shape
        good(5),  # 5 ok
        b"x" * 5000,  # 6 oversized
        json_ok,  # 7 ok (JSON)
        with_samples(inf),  # 8 inf
        good(9),  # 9 unknown content type
    ]
    ctypes = [None] * 10
    ctypes[7] = h.CONTENT_TYPE_JSON
    ctypes[9] = "application/x-protobuf"
    batch = decode_sensor_batch(values, ctypes, channels=C, n_samples=S, max_value_bytes=4096)
    assert batch.positions == [0, 5, 7]
    assert batch.event_ids == ["e-0", "e-5", "j"]
    assert batch.inputs.shape == (3, C, S)
    np.testing.assert_array_equal(batch.inputs[2], np.ones((C, S), dtype=np.float32))
    reasons = {pos: err.error_class for pos, err in batch.failures}
    assert reasons == {
        1: dl.UNDECODABLE,
        2: dl.EMPTY_VALUE,
        3: dl.NON_FINITE,
        4: dl.BAD_SHAPE,
        6: dl.OVERSIZED,
        8: dl.NON_FINITE,
        9: dl.UNKNOWN_CONTENT_TYPE,
    }
    assert [pos for pos, _ in batch.failures] == sorted(reasons)


def test_empty_batch() -> None:
    batch = decode_sensor_batch([], [], channels=C, n_samples=S)
    assert len(batch) == 0
    assert batch.inputs.shape == (0, C, S)


def _window(event_id: str, asset_id: str, sensor_id: str, t_ms: int, rate: float) -> bytes:
    record = codec.to_record(sensor_window(event_id))
    record.update(asset_id=asset_id, sensor_id=sensor_id, event_time_ms=t_ms, sample_rate_hz=rate)
    record["samples"] = np.arange(C * S, dtype="<f4").tobytes()
    return encode_record("SensorWindow", record)


NAMES = tuple(codec.to_record(sensor_window("x"))["channels"])


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.text(max_size=70),
            st.text(max_size=70),
            st.text(max_size=70),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.floats(width=32, allow_nan=True),
        ),
        max_size=8,
    )
)
def test_the_fast_path_reads_what_fastavro_reads(
    rows: list[tuple[str, str, str, int, float]],
) -> None:
    values: list[bytes | None] = [_window(*row) for row in rows]
    ctypes: list[str | None] = [None] * len(values)
    fast = decode_sensor_batch(values, ctypes, channels=C, n_samples=S, channel_names=NAMES)
    slow = decode_sensor_batch(values, ctypes, channels=C, n_samples=S)
    assert fast.positions == slow.positions
    assert (fast.event_ids, fast.asset_ids) == (slow.event_ids, slow.asset_ids)
    assert fast.event_time_ms.tolist() == slow.event_time_ms.tolist()
    assert np.array_equal(fast.inputs, slow.inputs)
    assert [(p, e.error_class) for p, e in fast.failures] == [
        (p, e.error_class) for p, e in slow.failures
    ]


def test_other_channels_or_framing_take_the_general_path() -> None:
    value = _window("e-1", "a", "s", 5, 1.0)
    framed = b"\x00\x00\x00\x00\x07" + value  # Confluent framing, schema id 7
    other = decode_sensor_batch(
        [value, framed], [None, None], channels=C, n_samples=S, channel_names=("a", "b", "c", "d")
    )
    assert other.event_ids == ["e-1", "e-1"]
