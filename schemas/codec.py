"""Encode and decode messages as Avro binary or JSON, chosen by the content-type header."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import numpy as np

from driftline.schemas import avro
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.messages import Message, SensorWindow

M = TypeVar("M", bound=Message)

_JSON_DECODER = msgspec.json.Decoder()
_JSON_ENCODER = msgspec.json.Encoder()


_AVRO_HEADERS = list(h.AVRO)


def content_type_of(headers: h.Headers) -> str | None:
    """The content-type header of a Kafka record, or None when absent."""
    # Most records carry exactly driftline's own Avro header: one list comparison, in C.
    if headers == _AVRO_HEADERS:
        return h.CONTENT_TYPE_AVRO
    for key, value in h.header_items(headers):
        if key == h.CONTENT_TYPE and value is not None:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            return text.split(";", 1)[0].strip().lower()
    return None


def to_record(msg: Message) -> dict[str, Any]:
    """The message as a plain dict (bytes kept as bytes), ready for the Avro writer."""
    record: dict[str, Any] = msgspec.to_builtins(msg, builtin_types=(bytes, bytearray))
    return record


def encode(
    msg: Message, *, content_type: str = h.CONTENT_TYPE_AVRO, schema_id: int | None = None
) -> bytes:
    """Serialise a message. Avro is the canonical form; JSON is for simple producers."""
    if content_type == h.CONTENT_TYPE_JSON:
        return _JSON_ENCODER.encode(msg)
    if content_type != h.CONTENT_TYPE_AVRO:
        raise ValueError(f"cannot encode to content type {content_type!r}")
    return avro.encode_record(msg.avro_name, to_record(msg), schema_id)


def _json_record(kind: type[Message], data: bytes) -> dict[str, Any]:
    try:
        record = _JSON_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise dl.CodecError(dl.UNDECODABLE, f"not valid JSON: {exc}") from exc
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:  # nesting too deep, ...
        raise dl.CodecError(dl.UNDECODABLE, f"not decodable JSON: {_named(exc)}") from exc
    if not isinstance(record, dict):
        raise dl.CodecError(dl.SCHEMA_INVALID, f"JSON {kind.avro_name} must be an object")
    if kind is SensorWindow and isinstance(record.get("samples"), list):
        # Simple producers may send samples as nested lists [[ch0...], [ch1...]].
        try:
            array = np.asarray(record["samples"], dtype="<f4")
        except (ValueError, TypeError, RecursionError, OverflowError) as exc:
            raise dl.CodecError(dl.BAD_SHAPE, f"samples are not a numeric matrix: {exc}") from exc
        if array.ndim != 2:
            raise dl.CodecError(dl.BAD_SHAPE, f"samples must be 2-D, got {array.ndim}-D")
        record["samples"] = array.tobytes()
        record.setdefault("n_samples", int(array.shape[1]))
    return record


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def decode_record(
    kind: type[Message], data: bytes | None, content_type: str | None
) -> dict[str, Any]:
    """Decode the wire bytes to a dict of fields without building the message.

    Every failure is a CodecError (a dead-letter reason naming the exception), never another
    exception: a record no decoder foresaw must not stop a partition.
    """
    try:
        return _decode_record(kind, data, content_type)
    except dl.CodecError:
        raise
    except Exception as exc:  # the unforeseen: dead-letter it with its class and message
        raise dl.CodecError(
            dl.UNDECODABLE, f"cannot decode {kind.avro_name}: {_named(exc)}"
        ) from exc


def _decode_record(
    kind: type[Message], data: bytes | None, content_type: str | None
) -> dict[str, Any]:
    if not data:
        raise dl.CodecError(dl.EMPTY_VALUE, "empty value or tombstone")
    if content_type is None or content_type == h.CONTENT_TYPE_AVRO:
        try:
            return avro.decode_record(kind.avro_name, data)
        except Exception as exc:  # fastavro raises many types on malformed bytes
            raise dl.CodecError(
                dl.UNDECODABLE, f"not a valid Avro {kind.avro_name}: {_named(exc)}"
            ) from exc
    if content_type == h.CONTENT_TYPE_JSON:
        return _json_record(kind, data)
    raise dl.CodecError(dl.UNKNOWN_CONTENT_TYPE, f"unknown content type {content_type!r}")


def decode(kind: type[M], data: bytes | None, content_type: str | None = None) -> M:
    """Decode and validate one message; raises CodecError (a dead-letter reason) on failure."""
    record = decode_record(kind, data, content_type)
    try:
        msg = msgspec.convert(record, kind)
    except msgspec.ValidationError as exc:
        raise dl.CodecError(dl.SCHEMA_INVALID, f"invalid {kind.avro_name}: {exc}") from exc
    except Exception as exc:  # e.g. RecursionError on a deeply nested field
        raise dl.CodecError(dl.SCHEMA_INVALID, f"invalid {kind.avro_name}: {_named(exc)}") from exc
    if isinstance(msg, SensorWindow):
        expected = 4 * len(msg.channels) * msg.n_samples
        if len(msg.samples) != expected:
            raise dl.CodecError(
                dl.BAD_SHAPE,
                f"samples hold {len(msg.samples)} bytes, expected {expected} "
                f"({len(msg.channels)} channels x {msg.n_samples} float32)",
            )
    return msg
