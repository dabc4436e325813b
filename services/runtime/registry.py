"""The model registry on the compacted models.registry topic.

Every version is written under the key "<name>/v<version>", so compaction keeps the whole
history; a champion is also written under the key "<name>", the pointer every consumer
follows. Rollback is writing an older version under "<name>" again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import Message

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.deadletter import CodecError
from driftline.schemas.messages import STATUS_CHAMPION, STATUS_RETIRED, ModelVersion
from driftline.services.runtime.kafka import Record, send_all
from driftline.services.runtime.reader import TopicReader
from driftline.services.runtime.settings import KafkaSettings

log = logging.getLogger(__name__)


def version_key(name: str, version: int) -> str:
    return f"{name}/v{version}"


@dataclass
class RegistrySnapshot:
    """What the registry says: every version by name, and the champion pointer by name."""

    versions: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    champions: dict[str, ModelVersion] = field(default_factory=dict)
    invalid: int = 0

    def apply(self, key: str | bytes | None, value: bytes | None) -> ModelVersion | None:
        """Fold one registry record in; returns the new champion when the record names one.

        A record that is no model version (no key, a key that is not UTF-8, bytes that do not
        decode) is counted in `invalid` and changes nothing; a tombstone is ignored.
        """
        if value is None:
            return None
        if isinstance(key, bytes):
            try:
                key = key.decode()
            except UnicodeDecodeError:
                key = None
        if key is None:
            self.invalid += 1
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
    records: list[Record] = [(version_key(mv.name, mv.version), value, h.AVRO)]
    if as_champion if as_champion is not None else mv.status == STATUS_CHAMPION:
        records.append((mv.name, value, h.AVRO))
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
        [(key, codec.encode(record), h.AVRO) for key, record in records_for(champion, previous)],
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


def _fold(snapshot: RegistrySnapshot, msgs: list[Message]) -> list[ModelVersion]:
    """Fold records into the snapshot; the champion records among them, in order."""
    champions = []
    for msg in msgs:
        invalid = snapshot.invalid
        champion = snapshot.apply(msg.key(), msg.value())
        if snapshot.invalid > invalid:
            log.warning(
                "registry record at %s[%s]@%s is not a model version (key %r); skipped",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                (msg.key() or b"")[:64],
            )
        if champion is not None:
            champions.append(champion)
    return champions


def read_snapshot(
    kafka: KafkaSettings,
    topic: str,
    *,
    timeout_s: float = 30.0,
    on_record: Callable[[ModelVersion], None] | None = None,
) -> RegistrySnapshot:
    """Read the registry from the beginning up to its current end (no consumer group)."""
    snapshot = RegistrySnapshot()
    with TopicReader(kafka, topic, "driftline-registry-reader", timeout_s=timeout_s) as reader:
        for msgs in reader.batches():
            for champion in _fold(snapshot, msgs):
                if on_record is not None:
                    on_record(champion)
    return snapshot


class RegistryFollower(threading.Thread):
    """Follows the registry from the beginning, for as long as the service runs.

    Every record is folded into `snapshot` (under `lock`). Once the whole log has been read,
    `on_caught_up(snapshot)` is called and `caught_up` set; after that, `on_champion(mv)` is
    called for each new champion pointer, in the order written. Before catching up only the
    last pointer matters, so older ones are not announced.

    A failure (the topic missing, a broker error) is kept in `error` and ends the thread,
    unless `retry_s` is set: then the follower reads the registry again after that pause.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        reader_name: str,
        *,
        timeout_s: float = 20.0,
        retry_s: float | None = None,
        on_caught_up: Callable[[RegistrySnapshot], None] | None = None,
        on_champion: Callable[[ModelVersion], None] | None = None,
    ) -> None:
        super().__init__(name="registry-follower", daemon=True)
        self.kafka = kafka
        self.topic = topic
        self.reader_name = reader_name
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.on_caught_up = on_caught_up
        self.on_champion = on_champion
        self.snapshot = RegistrySnapshot()
        self.lock = threading.Lock()
        self.caught_up = threading.Event()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def stop(self, timeout_s: float | None = None) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=self.timeout_s if timeout_s is None else timeout_s)

    def versions(self) -> dict[tuple[str, int], ModelVersion]:
        """Every version the registry holds, by (name, number)."""
        with self.lock:
            return {
                (name, number): mv
                for name, by_number in self.snapshot.versions.items()
                for number, mv in by_number.items()
            }

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._follow()
                return
            except Exception as exc:
                if self.retry_s is None:
                    self.error = exc
                    log.exception("following the model registry %s failed", self.topic)
                    self.caught_up.set()  # whoever waits for it sees the error
                    return
                log.warning("reading the model registry %s failed, retrying: %s", self.topic, exc)
                self.stopping.wait(self.retry_s)

    def _caught_up(self) -> None:
        if not self.caught_up.is_set():
            if self.on_caught_up is not None:
                self.on_caught_up(self.snapshot)
            self.caught_up.set()

    def _follow(self) -> None:
        with TopicReader(
            self.kafka,
            self.topic,
            self.reader_name,
            timeout_s=self.timeout_s,
            missing_hint="run `driftline topics create`",
        ) as reader:
            for msgs in reader.batches(
                until=None,
                stop=self.stopping.is_set,
                on_end=self._caught_up,
                on_error=lambda err: log.warning("registry read error: %s", err),
            ):
                with self.lock:
                    champions = _fold(self.snapshot, msgs)
                if self.caught_up.is_set() and self.on_champion is not None:
                    for champion in champions:
                        self.on_champion(champion)
