"""What the soak reads while it runs: resident memory, consumer lag, results by event id."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from driftline.schemas import codec
from driftline.schemas.messages import InferenceResult
from driftline.services.core.ledger import Ledger
from driftline.services.runtime.kafka import admin, consumer_config
from driftline.services.runtime.settings import KafkaSettings


def rss_mib(pid: int) -> float | None:
    """VmRSS of a process from /proc/PID/status, in MiB (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    return None


class LagProbe:
    """Lag of every consumer group of one topic prefix: committed offsets against the last
    stable offsets (what a read_committed consumer can reach), summed per group.

    Groups that never commit (registry followers, readers) have no offsets and are left out.
    """

    def __init__(self, kafka: KafkaSettings, timeout_s: float = 10.0) -> None:
        self.prefix = kafka.topic_prefix
        self.client: AdminClient = admin(kafka)
        self.timeout_s = timeout_s

    def sample(self) -> dict[str, dict[str, int]]:
        """{group: {topic: records behind}}, names without the prefix; a failed call raises
        KafkaException."""
        listed = self.client.list_consumer_groups(request_timeout=self.timeout_s)
        groups = [
            g.group_id
            for g in listed.result(timeout=self.timeout_s).valid
            if g.group_id.startswith(self.prefix)
        ]
        committed: dict[str, list[TopicPartition]] = {}
        for group in groups:
            req = [ConsumerGroupTopicPartitions(group)]
            res = self.client.list_consumer_group_offsets(req, request_timeout=self.timeout_s)
            tps = res[group].result(timeout=self.timeout_s).topic_partitions or []
            mine = [tp for tp in tps if tp.error is None and tp.offset >= 0]
            if mine:
                committed[group] = mine
        wanted = {(tp.topic, tp.partition) for tps in committed.values() for tp in tps}
        if not wanted:
            return {}
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        ends = self.client.list_offsets(
            {TopicPartition(t, p): latest for t, p in wanted},
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=self.timeout_s,
        )
        end = {
            (tp.topic, tp.partition): f.result(timeout=self.timeout_s).offset
            for tp, f in ends.items()
        }
        out: dict[str, dict[str, int]] = {}
        for group, tps in committed.items():
            topics = out.setdefault(group[len(self.prefix) :], {})
            for tp in tps:
                behind = max(0, end[(tp.topic, tp.partition)] - tp.offset)
                topic = tp.topic[len(self.prefix) :]
                topics[topic] = topics.get(topic, 0) + behind
        return out


@dataclass
class ResultsWatch:
    """Reads inference.results from the start with a read_committed consumer: every result
    is counted by event id (the ledger of what the simulator sent says what is lost or
    duplicated) and its latency, event time to scored time, is kept by when it was scored."""

    kafka: KafkaSettings
    started_ms: int  # wall clock when the stream started: scored times are counted from it
    ledger: Ledger = field(default_factory=Ledger)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    _scored_ms: list[int] = field(default_factory=list)
    _latency_ms: list[int] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def start(self) -> ResultsWatch:
        self._thread = threading.Thread(target=self._run, name="soak-results", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout_s: float = 10.0) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def record_sent(self, event_id: str, modality: str, true_class: str, t_s: float) -> None:
        with self.lock:
            self.ledger.record_sent(event_id, modality, true_class, t_s)

    def counts(self) -> tuple[int, int, int, int]:
        """(sent, scored at least once, lost so far, duplicated)."""
        with self.lock:
            sent = len(self.ledger.sent)
            lost = self.ledger.lost
            return sent, sent - lost, lost, self.ledger.duplicated

    def latencies(self) -> tuple[np.ndarray, np.ndarray]:
        """(seconds since the stream started when each result was scored, its latency in ms)."""
        with self.lock:
            scored = np.asarray(self._scored_ms, dtype=np.int64)
            latency = np.asarray(self._latency_ms, dtype=np.float64)
        return (scored - self.started_ms) / 1000.0, latency

    def _run(self) -> None:
        consumer = Consumer(
            consumer_config(
                self.kafka,
                f"soak-reader-{uuid.uuid4().hex[:8]}",  # no prefix: never commits, not sampled
            )
        )
        consumer.subscribe([self.kafka.topics.inference_results])
        try:
            while not self.stop.is_set():
                batch = consumer.consume(1000, timeout=0.2)
                decoded = [
                    codec.decode(InferenceResult, m.value())
                    for m in batch
                    if m.error() is None and m.value()
                ]
                if not decoded:
                    continue
                with self.lock:
                    for r in decoded:
                        self.ledger.record_result(r.event_id, r.model_version, r.predicted_class)
                        self._scored_ms.append(r.scored_time_ms)
                        self._latency_ms.append(r.scored_time_ms - r.event_time_ms)
        except Exception as exc:  # surfaced by the soak loop
            self.errors.append(exc)
        finally:
            consumer.close()
