"""Follow the model registry: every version (with its reference profile) as records arrive.

A thread reads models.registry from the beginning with a consumer of its own (assigned, no
group: the compacted log is read whole at every start) and folds each record into a
RegistrySnapshot, so drift checks see versions published before and after the app started.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from driftline.schemas.messages import ModelVersion
from driftline.services.runtime.registry import RegistrySnapshot
from driftline.services.runtime.settings import KafkaSettings

log = logging.getLogger(__name__)

Version = tuple[str, int]


class RegistryFollower:
    """The registry's versions by (name, number), kept current by a daemon thread."""

    def __init__(self, kafka: KafkaSettings, topic: str, timeout_s: float = 20.0) -> None:
        self.kafka = kafka
        self.topic = topic
        self.timeout_s = timeout_s
        self._snapshot = RegistrySnapshot()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RegistryFollower:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="registry", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s)

    def versions(self) -> dict[Version, ModelVersion]:
        with self._lock:
            return {
                (name, number): mv
                for name, by_number in self._snapshot.versions.items()
                for number, mv in by_number.items()
            }

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # keep following: the registry is needed only for drift
                log.warning("reading the model registry %s failed, retrying: %s", self.topic, exc)
                self._stop.wait(5.0)

    def _follow(self) -> None:
        consumer = Consumer(
            self.kafka.client_config(
                **{
                    "group.id": "driftline-features-registry",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                }
            )
        )
        try:
            meta = consumer.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
            if meta is None or meta.error is not None:
                raise RuntimeError(f"registry topic {self.topic!r} not found")
            consumer.assign(
                [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions]
            )
            while not self._stop.is_set():
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    raise RuntimeError(str(err))
                key = msg.key()
                with self._lock:
                    self._snapshot.apply(key.decode() if key else None, msg.value())
        finally:
            consumer.close()
