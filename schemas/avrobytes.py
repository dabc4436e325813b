"""Avro binary primitives for the hand-built encoders and decoders of the hot path
(result_batch, sensor_batch): the same bytes fastavro writes, without a record dict."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Avro writes an int or long as the zigzag of the value in base-128 varint bytes.
_MAX_VARINT = 10


def encode_long(value: int) -> bytes:
    """An Avro int or long: the zigzag of the value in base-128 varint bytes."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_string(text: str) -> bytes:
    """An Avro string: its UTF-8 length, then its UTF-8 bytes."""
    data = text.encode("utf-8")
    return encode_long(len(data)) + data


# Length prefixes of the strings a batch holds (ids are rarely longer than a few dozen bytes).
_LENGTHS = [encode_long(n) for n in range(1024)]


def length_prefix(n: int) -> bytes:
    """encode_long(n) for a length, from a table for the usual ones."""
    return _LENGTHS[n] if n < 1024 else encode_long(n)


def encode_longs(values: npt.NDArray[np.int64]) -> list[bytes]:
    """The Avro encoding of each int64 of an array, computed for the whole array at once."""
    v = np.asarray(values, dtype=np.int64)
    zz = ((v << 1) ^ (v >> 63)).astype(np.uint64)  # zigzag: small magnitudes, few bytes
    n = len(zz)
    out = np.zeros((n, _MAX_VARINT), dtype=np.uint8)
    used = np.ones(n, dtype=np.int64)
    for k in range(_MAX_VARINT):
        low = (zz & np.uint64(0x7F)).astype(np.uint8)
        zz >>= np.uint64(7)
        more = zz != 0
        out[:, k] = low | (more.astype(np.uint8) << 7)
        used += more
    flat = out.tobytes()
    ends = used.tolist()
    return [flat[i * _MAX_VARINT : i * _MAX_VARINT + ends[i]] for i in range(n)]
