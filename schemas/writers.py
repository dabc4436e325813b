"""Earlier writer schemas of records still on the wire, by record name and schema_version.

A record's first field is its schema_version, so a reader can tell which schema wrote it and
resolve it against the current one (Avro schema resolution: the current schema is the reader).
Only versions whose layout differs from the current .avsc are listed.
"""

from __future__ import annotations

from typing import Any

_TIMESTAMP = {"type": "long", "logicalType": "timestamp-millis"}

WRITER_SCHEMAS: dict[tuple[str, int], dict[str, Any]] = {
    # Label v1: per-event labels only (event_id required, no inspection fields).
    ("Label", 1): {
        "type": "record",
        "name": "Label",
        "namespace": "io.driftline",
        "fields": [
            {"name": "schema_version", "type": "int", "default": 1},
            {"name": "event_id", "type": "string"},
            {"name": "true_class", "type": "string"},
            {"name": "source", "type": "string"},
            {"name": "label_time_ms", "type": _TIMESTAMP},
            {"name": "asset_id", "type": ["null", "string"], "default": None},
        ],
    },
}
