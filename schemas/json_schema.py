"""JSON Schemas (draft 2020-12) for JSON producers, derived from the Avro contracts.

The Avro schema of each producer-facing record gives the fields, their types, their docs and
which are required (those without an Avro default). On top of that come the rules of the JSON
path that the consumers apply and Avro cannot say: a sensor window's samples are a nested list
of numbers, a photo is inline (base64) or by reference, a label names its asset, an inspection
its lookback. `docs/schemas/*.schema.json` are this module's output, checked by a unit test.
"""

from __future__ import annotations

import json
from typing import Any

from driftline.schemas import avro
from driftline.schemas.topics import CAMERA_IMAGES, FEEDBACK_LABELS, SENSOR_WINDOWS

DRAFT = "https://json-schema.org/draft/2020-12/schema"

# The records upstream producers write, and the topic each one goes to.
PRODUCER_RECORDS: dict[str, str] = {
    "SensorWindow": SENSOR_WINDOWS,
    "CameraImage": CAMERA_IMAGES,
    "Label": FEEDBACK_LABELS,
}

INT_RANGE = (-(2**31), 2**31 - 1)
LONG_RANGE = (-(2**63), 2**63 - 1)
FLOAT32_MAX = 3.4028234663852886e38
# Padded standard base64, what msgspec decodes into a bytes field (no newlines, no url-safe).
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

_PRIMITIVES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "boolean": {"type": "boolean"},
    "int": {"type": "integer", "minimum": INT_RANGE[0], "maximum": INT_RANGE[1]},
    "long": {"type": "integer", "minimum": LONG_RANGE[0], "maximum": LONG_RANGE[1]},
    "float": {"type": "number"},
    "double": {"type": "number"},
    "bytes": {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN},
}

# A sensor window's samples in JSON: one list of numbers per channel, in the order of
# `channels` (the inference consumer refuses base64 samples in JSON: they must be lists).
_SAMPLE_MATRIX: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
    },
    "description": "One list of float32-range numbers per channel, in the order of channels: "
    "[[channel 0 samples...], [channel 1 samples...], ...]; every row the same length.",
}


def _type_schema(avro_type: Any) -> dict[str, Any]:
    """The JSON Schema of one Avro type, as the JSON codec reads it."""
    if isinstance(avro_type, str):
        if avro_type not in _PRIMITIVES:
            raise ValueError(f"no JSON Schema for the Avro type {avro_type!r}")
        return dict(_PRIMITIVES[avro_type])
    if isinstance(avro_type, list):
        branches = [_type_schema(t) for t in avro_type if t != "null"]
        if len(branches) != 1:
            raise ValueError(f"only [null, T] unions are supported, not {avro_type!r}")
        if "null" in avro_type:
            return {"anyOf": [branches[0], {"type": "null"}]}
        return branches[0]
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if kind == "array":
            return {"type": "array", "items": _type_schema(avro_type["items"])}
        if avro_type.get("logicalType") == "timestamp-millis":
            return {**_type_schema(kind), "description": "Epoch milliseconds, UTC."}
        return _type_schema(kind)
    raise ValueError(f"no JSON Schema for the Avro type {avro_type!r}")


def _field_schema(field: dict[str, Any]) -> dict[str, Any]:
    schema = _type_schema(field["type"])
    doc = field.get("doc")
    if doc:
        known = schema.get("description")
        schema["description"] = f"{doc} ({known})" if known else doc
    if "default" in field and field["name"] != "schema_version":
        schema["default"] = field["default"]
    return schema


def _json_path_rules(name: str, schema: dict[str, Any]) -> None:
    """What the consumers require of a JSON record beyond its Avro types."""
    props = schema["properties"]
    props["schema_version"]["minimum"] = 1
    props["schema_version"]["description"] = (
        "Contract version of this record; leave it out for the current one."
    )
    if name == "SensorWindow":
        props["event_id"]["minLength"] = 1
        props["samples"] = _SAMPLE_MATRIX
        props["n_samples"]["description"] = (
            "Samples per channel; may be left out, it is then the length of the rows."
        )
        schema["required"].remove("n_samples")
    elif name == "CameraImage":
        props["event_id"]["minLength"] = 1
        props["content_type"]["enum"] = ["image/jpeg", "image/png"]
        props["image"]["description"] += " Base64 (standard alphabet, padded) in JSON."
        # One of the two must be set: a photo inline, or a reference to one.
        schema["anyOf"] = [
            {"required": ["image"], "properties": {"image": {"type": "string"}}},
            {"required": ["image_uri"], "properties": {"image_uri": {"type": "string"}}},
        ]
    elif name == "Label":
        props["asset_id"] = {
            "type": "string",
            "minLength": 1,
            "description": props["asset_id"]["description"]
            + " The join is partitioned by asset: a label without one is dead-lettered.",
        }
        schema["required"].append("asset_id")
        # An asset inspection (no event_id) needs how far back its finding holds.
        schema["if"] = {"properties": {"event_id": {"type": "null"}}}  # absent or null
        schema["then"] = {
            "required": ["lookback_ms"],
            "properties": {"lookback_ms": {"type": "integer", "minimum": 0}},
        }


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of a producer-facing record (a key of PRODUCER_RECORDS)."""
    if name not in PRODUCER_RECORDS:
        raise ValueError(f"{name!r} is not a producer record; one of {', '.join(PRODUCER_RECORDS)}")
    record = avro.schema_json(name)
    schema: dict[str, Any] = {
        "$schema": DRAFT,
        "$id": f"{name}.schema.json",
        "title": f"{record['namespace']}.{name}",
        "description": f"{record.get('doc', name)} JSON form: send it with the Kafka header "
        "content-type: application/json. Generated from schemas/avro/"
        f"{name}.avsc by `driftline schemas json`.",
        "type": "object",
        "properties": {f["name"]: _field_schema(f) for f in record["fields"]},
        "required": [f["name"] for f in record["fields"] if "default" not in f],
    }
    _json_path_rules(name, schema)
    return schema


def file_name(name: str) -> str:
    """The file a record's JSON Schema is written to, e.g. SensorWindow.schema.json."""
    return f"{name}.schema.json"


def render(name: str) -> str:
    """The JSON Schema as committed: indented, keys in contract order, one trailing newline."""
    return json.dumps(json_schema(name), indent=2) + "\n"
