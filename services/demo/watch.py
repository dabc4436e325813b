"""What the demo sees of a run: results by event id against the truth, and registry changes."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer

from driftline.schemas import codec
from driftline.schemas.deadletter import CodecError
from driftline.schemas.messages import InferenceResult, ModelVersion
from driftline.services.core.ledger import Ledger
from driftline.services.demo.report import Mark
from driftline.services.runtime.registry import RegistrySnapshot
from driftline.services.runtime.settings import KafkaSettings


@dataclass
class Watch:
    """What the demo sees of the run: results by event id, registry changes, first scores."""

    started: float
    ledger: Ledger = field(default_factory=Ledger)
    marks: list[Mark] = field(default_factory=list)
    first_seen: dict[tuple[str, int], float] = field(default_factory=dict)
    versions: dict[str, list[ModelVersion]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    def t(self) -> float:
        return time.monotonic() - self.started

    def read_results(self, kafka: KafkaSettings) -> None:
        consumer = _reader(kafka, [kafka.topics.inference_results])
        try:
            while not self.stop.is_set():
                for m in consumer.consume(1000, timeout=0.2):
                    if m.error() is not None or not m.value():
                        continue
                    r = codec.decode(InferenceResult, m.value())
                    with self.lock:
                        self.ledger.record_result(
                            r.event_id, r.model_version, r.predicted_class, r.confidence
                        )
                        key = (r.modality, r.model_version)
                        if key not in self.first_seen:
                            self.first_seen[key] = self.t()
                            if r.model_version > 1:
                                self.marks.append(
                                    Mark(self.t(), r.modality, f"v{r.model_version} serves")
                                )
        except BaseException as exc:  # surfaced by the demo loop
            self.errors.append(exc)
        finally:
            consumer.close()

    def follow_registry(self, kafka: KafkaSettings) -> None:
        consumer = _reader(kafka, [kafka.topics.models_registry])
        snapshot = RegistrySnapshot()
        try:
            while not self.stop.is_set():
                for m in consumer.consume(100, timeout=0.5):
                    if m.error() is not None:
                        continue
                    key = m.key()
                    if not key or b"/v" not in key or not m.value():
                        continue
                    try:
                        mv = codec.decode(ModelVersion, m.value())
                    except CodecError:  # not a model version: the consumers skip it too
                        continue
                    snapshot.apply(key, m.value())
                    with self.lock:
                        known = self.versions.setdefault(mv.modality, [])
                        if any(v.version == mv.version for v in known):
                            continue
                        known.append(mv)
                        if mv.version > 1:
                            kind = "rejected" if mv.status == "rejected" else "info"
                            text = f"v{mv.version} published as {mv.status}{_gate_text(mv)}"
                            self.marks.append(Mark(self.t(), mv.modality, text, kind))
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            consumer.close()


def _gate_text(mv: ModelVersion) -> str:
    ch = mv.metrics.get("holdout_macro_f1")
    cp = mv.metrics.get("champion_holdout_macro_f1")
    if ch is None or cp is None:
        return ""
    return f" (macro-F1 {ch:.2f} vs champion {cp:.2f})"


def _reader(kafka: KafkaSettings, topics: list[str]) -> Consumer:
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"demo-reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
    )
    consumer.subscribe(topics)
    return consumer
