"""Test-side Kafka reading: drain a topic from the beginning, as a read_committed consumer."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Message

from driftline.services.runtime.settings import KafkaSettings


def drain(
    kafka: KafkaSettings, topic: str, *, expect: int, timeout_s: float = 60.0, settle_s: float = 2.0
) -> list[Message]:
    """Every record of `topic`: read until `expect` arrived and nothing more came for settle_s.

    Reading on past the expected count is what lets a test see duplicates.
    """
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
    )
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(500, timeout=0.5)
            got = [m for m in batch if m.error() is None]
            if got:
                out.extend(got)
                quiet_since = time.monotonic()
            elif len(out) >= expect and time.monotonic() - quiet_since >= settle_s:
                break
    finally:
        consumer.close()
    return out
