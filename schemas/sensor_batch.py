"""Decode a batch of SensorWindow records into one [N, channels, samples] float32 array."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas.batch import DecodedBatch
from driftline.schemas.messages import SensorWindow


def decode_sensor_batch(
    values: Sequence[bytes | None],
    content_types: Sequence[str | None],
    *,
    channels: int,
    n_samples: int,
    max_value_bytes: int = 1 << 20,
) -> DecodedBatch:
    """Decode every value; those of the wrong shape or with NaN/inf samples become failures.

    The fields of each record are read by fastavro (C); the samples of the whole batch are
    joined once and viewed with numpy.frombuffer, so no Python work is done per sample.
    """
    expected_bytes = 4 * channels * n_samples
    positions: list[int] = []
    event_ids: list[str] = []
    asset_ids: list[str] = []
    times: list[int] = []
    chunks: list[bytes] = []
    failures: list[tuple[int, dl.CodecError]] = []
    for pos, (value, ctype) in enumerate(zip(values, content_types, strict=True)):
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
