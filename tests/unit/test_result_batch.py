"""The batch encoder writes exactly the bytes fastavro writes for each InferenceResult."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.schemas import codec
from driftline.schemas.avro import decode_record, encode_record
from driftline.schemas.avrobytes import encode_long, encode_longs
from driftline.schemas.messages import InferenceResult
from driftline.schemas.result_batch import ResultEncoder

CLASSES = ["healthy", "contaminated", "cracked", "flashover"]

ids = st.text(min_size=1, max_size=40) | st.text(min_size=1100, max_size=1200)
times = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(ids, ids, times, st.integers(0, 3)), min_size=0, max_size=20),
    version=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    scored=times,
    seed=st.integers(0, 2**32 - 1),
)
def test_every_record_is_what_fastavro_writes(
    rows: list[tuple[str, str, int, int]], version: int, scored: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.random((len(rows), len(CLASSES)), dtype=np.float32)
    conf = rng.random(len(rows), dtype=np.float32)
    enc = ResultEncoder(
        modality="sensor", model_name="insulator-sensor", model_version=version, classes=CLASSES
    )
    got = enc.encode(
        [r[0] for r in rows],
        [r[1] for r in rows],
        np.asarray([r[2] for r in rows], dtype=np.int64),
        probs,
        np.asarray([r[3] for r in rows], dtype=np.int64),
        conf,
        scored,
    )
    for i, (event_id, asset_id, t_ms, cls) in enumerate(rows):
        want = encode_record(
            "InferenceResult",
            {
                "schema_version": 1,
                "event_id": event_id,
                "asset_id": asset_id,
                "modality": "sensor",
                "model_name": "insulator-sensor",
                "model_version": version,
                "classes": CLASSES,
                "probabilities": probs[i].astype("<f4").tobytes(),
                "predicted_class": CLASSES[cls],
                "confidence": float(conf[i]),
                "event_time_ms": t_ms,
                "scored_time_ms": scored,
            },
        )
        assert got[i] == want


def test_a_result_decodes_to_the_message_it_describes() -> None:
    enc = ResultEncoder(modality="image", model_name="m", model_version=7, classes=CLASSES)
    probs = np.asarray([[0.1, 0.7, 0.1, 0.1]], dtype=np.float32)
    (value,) = enc.encode(
        ["e-1"],
        ["insulator-00007"],
        np.asarray([1_700_000_000_123]),
        probs,
        np.asarray([1]),
        np.asarray([0.7], dtype=np.float32),
        1_700_000_000_456,
    )
    result = codec.decode(InferenceResult, value)
    assert (result.event_id, result.asset_id, result.model_version) == ("e-1", "insulator-00007", 7)
    assert result.predicted_class == "contaminated"
    assert result.scored_time_ms - result.event_time_ms == 333
    assert decode_record("InferenceResult", value)["classes"] == CLASSES


def test_no_classes_and_a_shape_mismatch() -> None:
    empty = ResultEncoder(modality="sensor", model_name="m", model_version=1, classes=[])
    assert (
        empty.encode(
            [],
            [],
            np.zeros(0, np.int64),
            np.zeros((0, 0), np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            0,
        )
        == []
    )
    enc = ResultEncoder(modality="sensor", model_name="m", model_version=1, classes=CLASSES)
    with pytest.raises(ValueError, match="shape"):
        enc.encode(
            ["e"],
            ["a"],
            np.zeros(1, np.int64),
            np.zeros((1, 3), np.float32),
            np.zeros(1, np.int64),
            np.zeros(1, np.float32),
            0,
        )


@given(st.lists(times, max_size=50))
def test_longs_match_avro_one_by_one(values: list[int]) -> None:
    assert encode_longs(np.asarray(values, dtype=np.int64)) == [encode_long(v) for v in values]
