"""Loads the .avsc contracts and encodes/decodes Avro binary, with optional Confluent framing."""

from __future__ import annotations

import functools
import io
import json
import struct
from importlib import resources
from typing import Any

import fastavro

AVRO_PACKAGE_DIR = "avro"
CONFLUENT_MAGIC = 0
_FRAMING = struct.Struct(">bI")


def schema_names() -> list[str]:
    """Record names of every committed contract, e.g. ["Alert", "CameraImage", ...]."""
    folder = resources.files("driftline.schemas").joinpath(AVRO_PACKAGE_DIR)
    return sorted(
        p.name.removesuffix(".avsc") for p in folder.iterdir() if p.name.endswith(".avsc")
    )


def schema_json(name: str) -> dict[str, Any]:
    """The .avsc of a record, as committed (logical types included)."""
    path = resources.files("driftline.schemas").joinpath(AVRO_PACKAGE_DIR, f"{name}.avsc")
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _without_logical_types(node: Any) -> Any:
    # Timestamps travel as plain epoch-millisecond longs in our messages; fastavro would
    # otherwise turn them into datetimes on read. The wire format is identical.
    if isinstance(node, dict):
        return {k: _without_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_without_logical_types(v) for v in node]
    return node


@functools.cache
def parsed_schema(name: str) -> Any:
    """The fastavro-parsed schema used by the codecs (cached: parse once per process)."""
    return fastavro.parse_schema(_without_logical_types(schema_json(name)))


def encode_record(name: str, record: dict[str, Any], schema_id: int | None = None) -> bytes:
    """Avro binary of one record; prefixed with Confluent framing when a schema id is given."""
    buf = io.BytesIO()
    if schema_id is not None:
        buf.write(_FRAMING.pack(CONFLUENT_MAGIC, schema_id))
    fastavro.schemaless_writer(buf, parsed_schema(name), record)
    return buf.getvalue()


def strip_framing(data: bytes) -> tuple[int | None, memoryview]:
    """Split an optional Confluent header (magic 0 + schema id) from the Avro body.

    Every driftline record starts with schema_version >= 1, whose zig-zag varint is never
    0x00, so a leading zero byte is unambiguous framing.
    """
    view = memoryview(data)
    if len(view) >= _FRAMING.size and view[0] == CONFLUENT_MAGIC:
        _, schema_id = _FRAMING.unpack_from(view)
        return schema_id, view[_FRAMING.size :]
    return None, view


@functools.cache
def _writer_schema(name: str, version: int) -> Any:
    """The schema that wrote `version` of a record, when it differs from the current one."""
    from driftline.schemas.writers import WRITER_SCHEMAS

    writer = WRITER_SCHEMAS.get((name, version))
    return None if writer is None else fastavro.parse_schema(_without_logical_types(writer))


def _schema_version(body: memoryview) -> int:
    """The leading schema_version (a zig-zag varint int) of an Avro record body; -1 if none."""
    value = shift = 0
    for byte in body[:5]:
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value >> 1) ^ -(value & 1)
        shift += 7
    return -1


def decode_record(name: str, data: bytes) -> dict[str, Any]:
    """Decode Avro binary (framed or not) into a dict; raises on malformed input.

    Records written by an earlier schema_version are read with that version's writer schema
    and resolved to the current one (schemas.writers), so evolving a contract BACKWARD
    compatibly keeps older records on the wire readable.
    """
    _, body = strip_framing(data)
    buf = io.BytesIO(body)
    schema = parsed_schema(name)
    writer = _writer_schema(name, _schema_version(body))
    record = fastavro.schemaless_reader(buf, writer or schema, schema)
    if not isinstance(record, dict):
        raise ValueError(f"{name} did not decode to a record")
    if buf.tell() != len(body):
        raise ValueError(f"{len(body) - buf.tell()} trailing bytes after the {name} record")
    return record
