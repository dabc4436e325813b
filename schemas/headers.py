"""Kafka header names and content types used on every driftline topic."""

from __future__ import annotations

from typing import TypeAlias

# What confluent-kafka accepts and returns as record headers.
HeaderList: TypeAlias = list[tuple[str, str | bytes | None]]
Headers: TypeAlias = HeaderList | dict[str, str | bytes | None] | None


def header_items(headers: Headers) -> HeaderList:
    """Headers as a list of (name, value), whichever form they came in."""
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return headers


CONTENT_TYPE = "content-type"
CONTENT_TYPE_AVRO = "application/avro"
CONTENT_TYPE_JSON = "application/json"

# Dead-letter envelope, carried as headers beside the original bytes on <topic>.dlq.
DLQ_ERROR_CLASS = "driftline-error-class"
DLQ_ERROR_MESSAGE = "driftline-error-message"
DLQ_SOURCE_TOPIC = "driftline-source-topic"
DLQ_SOURCE_PARTITION = "driftline-source-partition"
DLQ_SOURCE_OFFSET = "driftline-source-offset"
DLQ_SERVICE = "driftline-service"
DLQ_FAILED_TIME_MS = "driftline-failed-time-ms"

# The headers of every Avro record driftline writes (confluent-kafka never changes them).
AVRO: HeaderList = [(CONTENT_TYPE, CONTENT_TYPE_AVRO.encode())]
