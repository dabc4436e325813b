"""Shared bench plumbing: a stack to run on, topics of one's own, preloaded events, a reader."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from driftline.schemas import headers as h
from driftline.services.runtime.kafka import (
    DeliveryTracker,
    create_topics,
    flush_or_raise,
    producer,
)
from driftline.services.runtime.settings import KafkaSettings

JSON: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_JSON.encode())]


def bench_kafka(bootstrap: str | None, partitions: int) -> KafkaSettings:
    """Kafka settings with a fresh topic prefix; starts the local stack when none is given."""
    if bootstrap is None:
        bootstrap = os.environ.get("DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS")
    if bootstrap is None:
        from driftline.services import localstack

        stack = localstack.LocalStack(
            localstack.default_data_dir(), localstack.StackPorts.from_env(), log=lambda _m: None
        )
        bootstrap = stack.up().bootstrap_servers
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.")
    create_topics(kafka, partitions=partitions)
    return kafka


def preload(
    kafka: KafkaSettings, topic: str, items: list[tuple[str, bytes]], headers: h.HeaderList
) -> None:
    prod = producer(kafka, **{"linger.ms": 20, "batch.num.messages": 10000})
    tracker = DeliveryTracker()
    for key, value in items:
        prod.produce(topic, key=key, value=value, headers=headers, on_delivery=tracker)
        if len(prod) > 50_000:
            prod.poll(0.05)
    flush_or_raise(prod, tracker, timeout_s=120)


def rss_bytes() -> int:
    """Resident memory of this process (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Reader:
    """Reads a topic from the start in a thread and records each record's arrival time."""

    kafka: KafkaSettings
    topic: str
    on_record: Callable[[bytes, float], None]
    stop: threading.Event = field(default_factory=threading.Event)
    count: int = 0

    def start(self) -> Reader:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        consumer = Consumer(
            self.kafka.client_config(
                **{
                    "group.id": f"bench-reader-{uuid.uuid4().hex[:6]}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 5,
                }
            )
        )
        consumer.subscribe([self.topic])
        try:
            while not self.stop.is_set():
                for m in consumer.consume(1000, timeout=0.05):
                    if m.error() is None and m.value() is not None:
                        self.count += 1
                        self.on_record(m.value(), time.perf_counter())  # type: ignore[arg-type]
        finally:
            consumer.close()


def write_report(report: dict[str, Any], out: Path | None, name: str) -> Path:
    path = out or Path(".driftline") / "bench" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
