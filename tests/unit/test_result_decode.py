"""The features worker's batch decoder reads what fastavro reads from every InferenceResult."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.avro import encode_record
from driftline.schemas.messages import InferenceResult
from driftline.schemas.result_batch import DecodedResults, ResultDecoder, ResultEncoder

CLASSES = ["healthy", "contaminated", "cracked", "flashover"]
LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
INTS = st.integers(min_value=-(2**31), max_value=2**31 - 1)


def record(
    event_id: str = "e-1",
    asset_id: str = "a-1",
    *,
    model: str = "insulator-sensor",
    version: int = 1,
    classes: list[str] = CLASSES,
    predicted: str = "healthy",
    confidence: float = 0.75,
    t_ms: int = 1_700_000_000_000,
    scored_ms: int = 1_700_000_000_010,
    probabilities: bytes = b"\x00" * 16,
    modality: str = "sensor",
) -> bytes:
    return encode_record(
        "InferenceResult",
        {
            "schema_version": 1,
            "event_id": event_id,
            "asset_id": asset_id,
            "modality": modality,
            "model_name": model,
            "model_version": version,
            "classes": classes,
            "probabilities": probabilities,
            "predicted_class": predicted,
            "confidence": confidence,
            "event_time_ms": t_ms,
            "scored_time_ms": scored_ms,
        },
    )


def rows(batch: DecodedResults) -> list[tuple[object, ...]]:
    """Every decoded record as the fields a reader sees (NaN confidences compare equal)."""
    out = []
    for i, pos in enumerate(batch.positions):
        m = batch.models[int(batch.model_index[i])]
        c = float(batch.confidence[i])
        out.append(
            (
                pos,
                batch.event_ids[i],
                batch.asset_ids[i],
                m.modality,
                m.model_name,
                m.model_version,
                m.classes,
                batch.class_names[int(batch.predicted[i])],
                "nan" if math.isnan(c) else c,
                int(batch.event_time_ms[i]),
                int(batch.scored_time_ms[i]),
            )
        )
    return out


def oracle(
    values: list[bytes | None], ctypes: list[str | None]
) -> tuple[list[tuple[object, ...]], list[tuple[int, str]]]:
    """codec.decode (fastavro, then msgspec) one record at a time."""
    got, failed = [], []
    for pos, (value, ctype) in enumerate(zip(values, ctypes, strict=True)):
        try:
            r = codec.decode(InferenceResult, value, ctype)
        except dl.CodecError as exc:
            failed.append((pos, exc.error_class))
            continue
        c = r.confidence
        got.append(
            (
                pos,
                r.event_id,
                r.asset_id,
                r.modality,
                r.model_name,
                r.model_version,
                tuple(r.classes),
                r.predicted_class,
                "nan" if math.isnan(c) else c,
                r.event_time_ms,
                r.scored_time_ms,
            )
        )
    return got, failed


def check(decoder: ResultDecoder, values: list[bytes | None], ctypes: list[str | None]) -> None:
    batch = decoder.decode(values, ctypes)
    want, failed = oracle(values, ctypes)
    assert rows(batch) == want
    assert [(p, e.error_class) for p, e in batch.failures] == failed


@settings(max_examples=150, deadline=None)
@given(
    fields=st.lists(
        st.tuples(
            st.text(max_size=70),
            st.text(max_size=70),
            st.sampled_from(["m", "insulator-sensor", "ünï"]),
            INTS,
            st.sampled_from([CLASSES, [], ["x"]]),
            st.sampled_from([*CLASSES, "other", "x"]),
            st.floats(width=32, allow_nan=True),
            LONGS,
            LONGS,
            st.binary(max_size=20),
        ),
        max_size=10,
    ),
    cuts=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 200), st.integers(0, 255))),
    twice=st.booleans(),
)
def test_the_fast_path_reads_what_fastavro_reads(
    fields: list[tuple[str, str, str, int, list[str], str, float, int, int, bytes]],
    cuts: list[tuple[int, int, int]],
    twice: bool,
) -> None:
    values: list[bytes | None] = []
    for e, a, model, version, classes, predicted, conf, t, s, probs in fields:
        values.append(
            record(
                e,
                a,
                model=model,
                version=version,
                classes=classes,
                predicted=predicted,
                confidence=conf,
                t_ms=t,
                scored_ms=s,
                probabilities=probs,
            )
        )
    # Damage some: a byte changed, the end cut off, or bytes appended.
    for row, at, byte in cuts:
        if row >= len(values):
            continue
        v = values[row]
        if not v:
            continue
        if byte < 64:
            values[row] = v[: at % (len(v) + 1)]
        elif byte < 96:
            values[row] = v + bytes([byte])
        else:
            k = at % len(v)
            values[row] = v[:k] + bytes([byte]) + v[k + 1 :]
    ctypes: list[str | None] = [None] * len(values)
    decoder = ResultDecoder()
    check(decoder, values, ctypes)
    if twice:  # now every model version is known: the fast path reads them
        check(decoder, values, ctypes)


def test_results_the_inference_consumer_encodes_are_read_by_slicing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    enc = ResultEncoder(modality="sensor", model_name="m", model_version=3, classes=CLASSES)
    n = 200
    rng = np.random.default_rng(5)
    values: list[bytes | None] = list(
        enc.encode(
            [f"e-{i}" for i in range(n)],
            [f"insulator-{i % 13:05d}" for i in range(n)],
            1_700_000_000_000 + np.arange(n, dtype=np.int64) * 250,
            rng.random((n, len(CLASSES)), dtype=np.float32),
            rng.integers(0, len(CLASSES), n),
            rng.random(n, dtype=np.float32),
            1_700_000_100_000,
        )
    )
    decoder = ResultDecoder()
    check(decoder, values, [h.CONTENT_TYPE_AVRO] * n)
    slow: list[bytes | None] = []
    general = codec.decode

    def counting(kind: type[InferenceResult], value: bytes | None, ctype: str | None) -> object:
        slow.append(value)
        return general(kind, value, ctype)

    monkeypatch.setattr(codec, "decode", counting)
    batch = decoder.decode(values, [None] * n)
    monkeypatch.undo()
    assert slow == [], "a known model version's results take the fast path"
    assert rows(batch) == oracle(values, [None] * n)[0]


def test_json_framed_and_bad_records_take_the_general_path() -> None:
    good = record("e-1", "a-1")
    framed = b"\x00\x00\x00\x00\x07" + good
    as_json = msgspec.json.encode(msgspec.to_builtins(codec.decode(InferenceResult, good)))
    values: list[bytes | None] = [good, framed, as_json, None, b"\x02junk", good + b"\x00", good]
    ctypes: list[str | None] = [None, None, h.CONTENT_TYPE_JSON, None, None, None, "text/plain"]
    decoder = ResultDecoder()
    check(decoder, values, ctypes)
    batch = decoder.decode(values, ctypes)
    assert batch.positions == [0, 1, 2]
    assert {p: e.error_class for p, e in batch.failures} == {
        3: dl.EMPTY_VALUE,
        4: dl.UNDECODABLE,
        5: dl.UNDECODABLE,
        6: dl.UNKNOWN_CONTENT_TYPE,
    }
