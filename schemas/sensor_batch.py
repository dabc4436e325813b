"""Decode a batch of SensorWindow records into one [N, channels, samples] float32 array."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.avrobytes import encode_long, encode_string
from driftline.schemas.batch import DecodedBatch
from driftline.schemas.messages import SensorWindow


def window_tail(channel_names: Sequence[str], n_samples: int) -> bytes:
    """The Avro bytes between a window's sample rate and its samples, for these channels:
    the channels array, n_samples, and the samples' length prefix."""
    array = (
        encode_long(len(channel_names))
        + b"".join(encode_string(c) for c in channel_names)
        + b"\x00"
        if channel_names
        else b"\x00"
    )
    return array + encode_long(n_samples) + encode_long(4 * len(channel_names) * n_samples)


def _common_layout(value: bytes, tail: bytes, samples: int) -> tuple[str, str, int, int] | None:
    """(event_id, asset_id, event_time_ms, where the samples start) of an unframed schema v1
    window whose ids are under 64 bytes and whose channels and size are `tail`'s; None for
    any other record, which the general decoder then reads. It accepts only records that
    decoder accepts and reads the same fields from them (test_sensor_batch.py compares)."""
    if value[0] != 2:  # schema_version 1 (zigzag 2); 0 would be Confluent framing
        return None
    i = 1
    n = value[i]
    if n & 0x81 or n == 0:  # a one-byte, non-empty, even (non-negative) length
        return None
    event_id = value[i + 1 : i + 1 + (n >> 1)].decode("utf-8")
    i += 1 + (n >> 1)
    n = value[i]
    if n & 0x81:
        return None
    asset_id = value[i + 1 : i + 1 + (n >> 1)].decode("utf-8")
    i += 1 + (n >> 1)
    n = value[i]  # sensor_id: checked, not kept
    if n & 0x81:
        return None
    value[i + 1 : i + 1 + (n >> 1)].decode("utf-8")
    i += 1 + (n >> 1)
    acc = shift = 0
    while True:  # event_time_ms, a varint long
        b = value[i]
        i += 1
        acc |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            return None
    i += 4  # sample_rate_hz, a float
    if not value.startswith(tail, i) or len(value) - i - len(tail) != samples:
        return None
    return event_id, asset_id, (acc >> 1) ^ -(acc & 1), i + len(tail)


_AVRO = (None, h.CONTENT_TYPE_AVRO)


def decode_sensor_batch(
    values: Sequence[bytes | None],
    content_types: Sequence[str | None],
    *,
    channels: int,
    n_samples: int,
    max_value_bytes: int = 1 << 20,
    channel_names: Sequence[str] | None = None,
) -> DecodedBatch:
    """Decode every value; those of the wrong shape or with NaN/inf samples become failures.

    With `channel_names` (the contract's), an Avro record in the common layout is read by
    slicing its bytes (_common_layout); any other record by fastavro (C). The samples of the
    whole batch are joined once and viewed with numpy.frombuffer, so no Python work is done
    per sample.
    """
    expected_bytes = 4 * channels * n_samples
    tail = (
        window_tail(channel_names, n_samples)
        if channel_names is not None and len(channel_names) == channels
        else None
    )
    positions: list[int] = []
    event_ids: list[str] = []
    asset_ids: list[str] = []
    times: list[int] = []
    chunks: list[bytes | memoryview] = []
    failures: list[tuple[int, dl.CodecError]] = []
    for pos, (value, ctype) in enumerate(zip(values, content_types, strict=True)):
        if tail is not None and value and ctype in _AVRO and len(value) <= max_value_bytes:
            try:
                fast = _common_layout(value, tail, expected_bytes)
            except (IndexError, UnicodeDecodeError):
                fast = None
            if fast is not None:
                positions.append(pos)
                event_ids.append(fast[0])
                asset_ids.append(fast[1])
                times.append(fast[2])
                chunks.append(memoryview(value)[fast[3] :])
                continue
        if value is not None and len(value) > max_value_bytes:
            failures.append(
                (pos, dl.CodecError(dl.OVERSIZED, f"{len(value)} bytes > limit {max_value_bytes}"))
            )
            continue
        try:
            record = codec.decode_record(SensorWindow, value, ctype)
            samples = record["samples"]
            if not isinstance(samples, bytes) or len(samples) != expected_bytes:
                got = len(samples) if isinstance(samples, bytes | str) else type(samples).__name__
                raise dl.CodecError(
                    dl.BAD_SHAPE,
                    f"samples hold {got} bytes, the model expects {expected_bytes} "
                    f"({channels} channels x {n_samples} float32)",
                )
            if len(record["channels"]) != channels or record["n_samples"] != n_samples:
                raise dl.CodecError(
                    dl.BAD_SHAPE,
                    f"window is {len(record['channels'])}x{record['n_samples']}, "
                    f"the model expects {channels}x{n_samples}",
                )
            event_id, asset_id, time_ms = (
                record["event_id"],
                record["asset_id"],
                record["event_time_ms"],
            )
            if not (isinstance(event_id, str) and isinstance(asset_id, str) and event_id):
                raise dl.CodecError(dl.SCHEMA_INVALID, "event_id and asset_id must be strings")
            if not isinstance(time_ms, int) or isinstance(time_ms, bool):
                raise dl.CodecError(dl.SCHEMA_INVALID, "event_time_ms must be an integer")
        except dl.CodecError as exc:
            failures.append((pos, exc))
            continue
        except KeyError as exc:
            failures.append((pos, dl.CodecError(dl.SCHEMA_INVALID, f"missing field {exc}")))
            continue
        except Exception as exc:  # the unforeseen dead-letters the record, never the partition
            failures.append((pos, dl.CodecError(dl.SCHEMA_INVALID, f"{type(exc).__name__}: {exc}")))
            continue
        positions.append(pos)
        event_ids.append(event_id)
        asset_ids.append(asset_id)
        times.append(time_ms)
        chunks.append(samples)

    array = np.frombuffer(b"".join(chunks), dtype="<f4").reshape(len(chunks), channels, n_samples)
    finite = np.isfinite(array).all(axis=(1, 2))
    if not finite.all():
        keep = np.flatnonzero(finite)
        for i in np.flatnonzero(~finite).tolist():
            failures.append((positions[i], dl.CodecError(dl.NON_FINITE, "NaN or infinite sample")))
        positions = [positions[i] for i in keep.tolist()]
        event_ids = [event_ids[i] for i in keep.tolist()]
        asset_ids = [asset_ids[i] for i in keep.tolist()]
        times = [times[i] for i in keep.tolist()]
        array = array[keep]
    failures.sort(key=lambda item: item[0])
    return DecodedBatch(
        positions=positions,
        event_ids=event_ids,
        asset_ids=asset_ids,
        event_time_ms=np.asarray(times, dtype=np.int64),
        inputs=array,
        failures=failures,
    )
