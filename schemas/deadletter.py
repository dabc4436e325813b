"""Dead-letter reason codes and the header envelope that carries them on <topic>.dlq."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from driftline.schemas import headers as h
from driftline.schemas.messages import DeadLetter

# Bounded reason codes: they label metrics, so keep the set small and stable.
UNDECODABLE = "undecodable"
SCHEMA_INVALID = "schema_invalid"
BAD_SHAPE = "bad_shape"
NON_FINITE = "non_finite"
EMPTY_VALUE = "empty_value"
OVERSIZED = "oversized"
UNKNOWN_CONTENT_TYPE = "unknown_content_type"
BAD_IMAGE = "bad_image"
UNKNOWN_EVENT = "unknown_event"
SCORING_FAILED = "scoring_failed"
UNKNOWN_CLASS = "unknown_class"
MISSING_INPUT = "missing_input"

REASONS = (
    UNDECODABLE,
    SCHEMA_INVALID,
    BAD_SHAPE,
    NON_FINITE,
    EMPTY_VALUE,
    OVERSIZED,
    UNKNOWN_CONTENT_TYPE,
    BAD_IMAGE,
    UNKNOWN_EVENT,
    SCORING_FAILED,
    UNKNOWN_CLASS,
    MISSING_INPUT,
)

# Why an alert is on alerts.dlq: the webhook never took it (see services/alerts/consumer.py).
WEBHOOK_FAILED = "webhook_failed"  # retries spent: 429, 5xx, timeouts or network errors
WEBHOOK_REJECTED = "webhook_rejected"  # answered a 4xx (or a redirect): not retried
WEBHOOK_SKIPPED = "webhook_skipped"  # not attempted: the batch's webhook budget was spent

WEBHOOK_REASONS = (WEBHOOK_FAILED, WEBHOOK_REJECTED, WEBHOOK_SKIPPED)

# The same three outcomes for Alertmanager (`driftline alerts --alertmanager-url`).
ALERTMANAGER_FAILED = "alertmanager_failed"
ALERTMANAGER_REJECTED = "alertmanager_rejected"
ALERTMANAGER_SKIPPED = "alertmanager_skipped"

ALERTMANAGER_REASONS = (ALERTMANAGER_FAILED, ALERTMANAGER_REJECTED, ALERTMANAGER_SKIPPED)

MAX_MESSAGE_HEADER_CHARS = 1000


class Reason(Protocol):
    """Why a record is dead-lettered: a bounded code and a message for people."""

    @property
    def error_class(self) -> str: ...

    @property
    def message(self) -> str: ...


class CodecError(ValueError):
    """A record that cannot become a valid message; `error_class` is one of REASONS."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message


@dataclass(frozen=True)
class Undelivered:
    """An alert the webhook (or Alertmanager) did not take; `error_class` is one of
    WEBHOOK_REASONS (ALERTMANAGER_REASONS)."""

    error_class: str
    message: str


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    error: Reason,
    service: str,
    key: bytes | None,
    value: bytes | None,
    now_ms: int | None = None,
) -> DeadLetter:
    """The typed envelope for one failed record."""
    return DeadLetter(
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        error_class=error.error_class,
        error_message=error.message[:MAX_MESSAGE_HEADER_CHARS],
        service=service,
        failed_time_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        key=key,
        value=value,
    )


def to_headers(letter: DeadLetter, original: h.Headers = None) -> h.HeaderList:
    """Headers for the DLQ record: the original ones first, then the envelope."""
    envelope: h.HeaderList = [
        (h.DLQ_ERROR_CLASS, letter.error_class.encode()),
        (h.DLQ_ERROR_MESSAGE, letter.error_message.encode()),
        (h.DLQ_SOURCE_TOPIC, letter.source_topic.encode()),
        (h.DLQ_SOURCE_PARTITION, str(letter.source_partition).encode()),
        (h.DLQ_SOURCE_OFFSET, str(letter.source_offset).encode()),
        (h.DLQ_SERVICE, letter.service.encode()),
        (h.DLQ_FAILED_TIME_MS, str(letter.failed_time_ms).encode()),
    ]
    kept = [(k, v) for k, v in h.header_items(original) if not k.startswith("driftline-")]
    return kept + envelope


def from_headers(headers: h.Headers, key: bytes | None, value: bytes | None) -> DeadLetter:
    """Rebuild the envelope from a DLQ record's headers (unknown fields read as empty)."""
    found = {
        k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v
        for k, v in h.header_items(headers)
        if v is not None
    }

    def num(name: str) -> int:
        try:
            return int(found.get(name, "-1"))
        except ValueError:
            return -1

    return DeadLetter(
        source_topic=found.get(h.DLQ_SOURCE_TOPIC, ""),
        source_partition=num(h.DLQ_SOURCE_PARTITION),
        source_offset=num(h.DLQ_SOURCE_OFFSET),
        error_class=found.get(h.DLQ_ERROR_CLASS, ""),
        error_message=found.get(h.DLQ_ERROR_MESSAGE, ""),
        service=found.get(h.DLQ_SERVICE, ""),
        failed_time_ms=num(h.DLQ_FAILED_TIME_MS),
        key=key,
        value=value,
    )
