"""The model registry on the compacted models.registry topic.

Every version is written under the key "<name>/v<version>", so compaction keeps the whole
history; a champion is also written under the key "<name>", the pointer every consumer
follows. Rollback is writing an older version under "<name>" again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.deadletter import CodecError
from driftline.schemas.messages import STATUS_CHAMPION, STATUS_RETIRED, ModelVersion
from driftline.services.runtime.kafka import Record, send_all
from driftline.services.runtime.settings import KafkaSettings

_HEADERS: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]


def version_key(name: str, version: int) -> str:
    return f"{name}/v{version}"


@dataclass
class RegistrySnapshot:
    """What the registry says: every version by name, and the champion pointer by name."""

    versions: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    champions: dict[str, ModelVersion] = field(default_factory=dict)
    invalid: int = 0

    def apply(self, key: str | None, value: bytes | None) -> ModelVersion | None:
        """Fold one registry record in; returns the new champion when the record names one."""
        if key is None or value is None:
            return None
        try:
            mv = codec.decode(ModelVersion, value)
        except CodecError:
            self.invalid += 1
            return None
        if "/v" in key:
            self.versions.setdefault(mv.name, {})[mv.version] = mv
            return None
        self.versions.setdefault(mv.name, {}).setdefault(mv.version, mv)
        self.champions[mv.name] = mv
        return mv

    def latest_version(self, name: str) -> int:
        return max(self.versions.get(name, {}), default=0)


def publish(
    kafka: KafkaSettings, topic: str, mv: ModelVersion, *, as_champion: bool | None = None
) -> None:
    """Write a version record (and the champion pointer when it is the champion); wait for acks."""
    value = codec.encode(mv)
    records: list[Record] = [(version_key(mv.name, mv.version), value, _HEADERS)]
    if as_champion if as_champion is not None else mv.status == STATUS_CHAMPION:
        records.append((mv.name, value, _HEADERS))
    send_all(kafka, topic, records)


# A version that served once: the trainer and `models promote` retire a champion they replace.
SERVED_STATUSES = (STATUS_CHAMPION, STATUS_RETIRED)


def records_for(mv: ModelVersion, previous: ModelVersion | None) -> list[tuple[str, ModelVersion]]:
    """The records that publish `mv`, in order.

    A champion is written under its version key and the pointer key; the champion it replaces
    is then re-written under its version key as retired. Readers trust only the pointer, so a
    crash between those records leaves a consistent registry (the old record just keeps its
    stale status).
    """
    records = [(version_key(mv.name, mv.version), mv)]
    if mv.status == STATUS_CHAMPION:
        records.append((mv.name, mv))
        if previous is not None and previous.version != mv.version:
            retired = msgspec.structs.replace(previous, status=STATUS_RETIRED)
            records.append((version_key(previous.name, previous.version), retired))
    return records


def promote(
    kafka: KafkaSettings, topic: str, mv: ModelVersion, previous: ModelVersion | None
) -> ModelVersion:
    """Make `mv` the champion (its record and the pointer), retiring `previous`; wait for acks.

    The registry has one partition, so these records are read back in the order written.
    """
    champion = msgspec.structs.replace(mv, status=STATUS_CHAMPION)
    send_all(
        kafka,
        topic,
        [(key, codec.encode(record), _HEADERS) for key, record in records_for(champion, previous)],
    )
    return champion


def rollback_target(snapshot: RegistrySnapshot, name: str) -> ModelVersion | None:
    """The champion before the current one: the newest older version that served.

    Rolling back retires the current champion, so rolling back again goes one further back.
    """
    current = snapshot.champions.get(name)
    if current is None:
        return None
    served = [
        mv
        for v, mv in snapshot.versions.get(name, {}).items()
        if v < current.version and mv.status in SERVED_STATUSES
    ]
    return max(served, key=lambda mv: mv.version, default=None)


def read_snapshot(
    kafka: KafkaSettings,
    topic: str,
    *,
    timeout_s: float = 30.0,
    on_record: Callable[[ModelVersion], None] | None = None,
) -> RegistrySnapshot:
    """Read the registry from the beginning up to its current end (no consumer group)."""
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": "driftline-registry-reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
    )
    snapshot = RegistrySnapshot()
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            raise RuntimeError(
                f"registry topic {topic!r} not found; run `driftline topics create` first"
            )
        # Partition EOF events mark the end even when the log ends in transaction markers.
        pending = set(tmeta.partitions)
        consumer.assign([TopicPartition(topic, pid, OFFSET_BEGINNING) for pid in pending])
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"registry topic {topic!r} not read to its end in {timeout_s}s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise RuntimeError(f"reading {topic}: {err}")
            key = msg.key()
            champion = snapshot.apply(key.decode() if key else None, msg.value())
            if champion is not None and on_record is not None:
                on_record(champion)
    finally:
        consumer.close()
    return snapshot
