"""The join's router: inputs, results and labels onto the join topic, keyed by asset id.

Routing is stateless, so it runs on the shared batch loop (runtime/batchloop.py) with
confluent-kafka, not as faust agents: a faust agent spent about a millisecond of CPU per
forwarded record (aiokafka's fetch and send in Python, faust's per-event stream machinery and
offset bookkeeping), which capped a join worker at a few hundred events per second, far
below what inference scores (seen in the soak at 500 windows/s). Here a batch of records
becomes a batch of join notes produced to the partition the join's tables use
(`join_partition`), then the batch's offsets are committed once every note is acknowledged:
at-least-once, as faust's forwarding was. A record routed twice after a crash is a note the
join already holds (events and results are keyed by event id; a label's source position
names it), so nothing is joined twice.

What a record becomes (`route`) is shared with the in-memory pipeline (joinstage.JoinStage).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.messages import Label
from driftline.schemas.result_batch import ResultDecoder
from driftline.schemas.topics import FEEDBACK_LABELS, Topics
from driftline.services.core.batching import BatchPolicy
from driftline.services.core.join import label_problem
from driftline.services.features import joinrecords as jr
from driftline.services.features.joinkeys import join_partition
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.records import RawRecord
from driftline.services.features.settings import FeaturesSettings
from driftline.services.runtime.batchloop import (
    BatchLoop,
    LoopConfig,
    LoopMetrics,
    Offsets,
    RewindBatch,
)
from driftline.services.runtime.kafka import DeliveryTracker, RenewableProducer, spans

log = logging.getLogger(__name__)

ROUTER_BATCH = 2000
FLUSH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Note:
    """A record for the join topic: the asset it belongs to, its value and headers."""

    asset_id: str
    value: bytes
    headers: h.HeaderList


@dataclass(frozen=True)
class Refused:
    """A record the join cannot use: skipped (inputs, results) or dead-lettered (labels)."""

    error: dl.CodecError
    dead_letter_topic: str | None


RESULT_HEADERS: h.HeaderList = [(jr.JOIN_KIND, jr.KIND_RESULT.encode())]


def route(rec: RawRecord, topics: Topics) -> Note | Refused:
    """What one consumed input or label becomes on the join topic (results are routed a
    batch at a time: JoinRouter._results)."""
    if rec.topic == topics.feedback_labels:
        return _label(rec, topics)
    input_type = "CameraImage" if rec.topic == topics.camera_images else "SensorWindow"
    try:
        stored = jr.stored_input(input_type, rec.value, rec.content_type)
    except dl.CodecError as exc:  # the inference consumer dead-letters bad inputs
        return Refused(exc, None)
    note = jr.input_note(stored, rec.topic, rec.partition, rec.offset)
    return Note(stored.asset_id, note, [(jr.JOIN_KIND, b"input")])


def _label(rec: RawRecord, topics: Topics) -> Note | Refused:
    """A label travels as it came, with where it came from; one that cannot be routed (no
    asset id) or is not well formed (an inspection without lookback) is dead-lettered."""
    try:
        label = codec.decode(Label, rec.value, rec.content_type)
        problem = label_problem(label)
        if problem is not None:
            raise dl.CodecError(dl.SCHEMA_INVALID, problem)
    except dl.CodecError as exc:
        return Refused(exc, topics.dlq(FEEDBACK_LABELS))
    assert rec.value is not None
    assert label.asset_id is not None
    hdrs: h.HeaderList = [(k, v) for k, v in rec.headers if not k.startswith("driftline-join-")]
    hdrs += [
        (jr.JOIN_KIND, jr.KIND_LABEL.encode()),
        (jr.JOIN_SOURCE, jr.source_header(rec.topic, rec.partition, rec.offset)),
    ]
    return Note(label.asset_id, rec.value, hdrs)


def dead_letter_record(
    rec: RawRecord, error: dl.CodecError, service: str
) -> tuple[bytes | None, bytes, h.HeaderList]:
    """(key, value, headers) of a consumed record's dead letter."""
    letter = dl.dead_letter(
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        error=error,
        service=service,
        key=rec.key,
        value=rec.value,
    )
    return rec.key, rec.value or b"", dl.to_headers(letter, rec.headers)


def raw(msg: Message) -> RawRecord:
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None
    assert partition is not None
    assert offset is not None
    return RawRecord(
        topic, partition, offset, msg.key(), msg.value(), h.header_items(msg.headers())
    )


class JoinRouter:
    """The batch handler: route a batch, produce its notes, commit once all are acknowledged."""

    def __init__(self, settings: FeaturesSettings, metrics: FeaturesMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.topics = settings.kafka.topics
        self.join_topic = f"{settings.faust_app_id}-join"
        self.partitions = settings.join_partitions
        self._consumer: Consumer | None = None
        self._producer: RenewableProducer | None = None
        self._decoder = ResultDecoder()  # remembers the model versions' layouts

    def start(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._producer = RenewableProducer(self.settings.kafka, None, **{"linger.ms": 5})

    def assigned(
        self, _consumer: Consumer, _parts: list[TopicPartition]
    ) -> list[TopicPartition] | None:
        return None

    def revoked(self, _parts: list[TopicPartition]) -> Offsets | None:
        return None  # every batch is acknowledged and committed before the next one

    def idle(self) -> None:
        return None

    def recover(self, _waited_s: float) -> None:
        return None

    def abandon(self) -> None:
        if self._producer is not None:
            self._producer.renew_if_fatal()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.producer.flush(10)

    def handle(self, msgs: list[Message]) -> int:
        assert self._consumer is not None
        assert self._producer is not None
        prod = self._producer.producer
        tracker = DeliveryTracker()
        good = [m for m in msgs if m.error() is None]
        counts: dict[str, int] = {}
        m = self.metrics
        results_topic = self.topics.inference_results
        results = [msg for msg in good if msg.topic() == results_topic]
        if results:
            self._results(results, prod, tracker)
            counts[results_topic] = len(results)
        for msg in good:
            if msg.topic() == results_topic:
                continue
            rec = raw(msg)
            counts[rec.topic] = counts.get(rec.topic, 0) + 1
            out = route(rec, self.topics)
            if isinstance(out, Note):
                partition = join_partition(out.asset_id, self.partitions)
                prod.produce(
                    self.join_topic,
                    key=out.asset_id.encode(),
                    value=out.value,
                    headers=out.headers,
                    partition=partition,
                    on_delivery=tracker,
                )
            elif out.dead_letter_topic is not None:
                key, value, hdrs = dead_letter_record(rec, out.error, self.settings.service_name)
                prod.produce(
                    out.dead_letter_topic, key=key, value=value, headers=hdrs, on_delivery=tracker
                )
                m.dead_letters.labels(rec.topic, out.error.error_class).inc()
            else:  # the inference consumer dead-letters bad inputs; the join skips them
                m.events.labels("input_skipped").inc()
        prod.poll(0)
        parts = spans(good)
        remaining = prod.flush(FLUSH_TIMEOUT_S)
        if remaining or tracker.errors:
            self._producer.note(tracker.fatal)
            self._producer.renew_if_fatal()
            why = f"{remaining} unacknowledged" if remaining else tracker.errors[0]
            starts = {key: start for key, (start, _) in parts.items()}
            raise RewindBatch(f"join notes not delivered: {why}", starts)
        offsets = [TopicPartition(t, p, end) for (t, p), (_, end) in parts.items()]
        if offsets:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        for topic, n in counts.items():
            m.consumed.labels(topic).inc(n)
        return len(good)

    def _results(self, msgs: list[Message], prod: Producer, tracker: DeliveryTracker) -> None:
        """A batch's results, decoded as columns, each to a prediction note (bad results are
        the statistics role's to dead-letter)."""
        batch = self._decoder.decode(
            [msg.value() for msg in msgs], [codec.content_type_of(msg.headers()) for msg in msgs]
        )
        if batch.failures:
            self.metrics.events.labels("undecodable").inc(len(batch.failures))
        for asset_id, note in zip(batch.asset_ids, jr.result_notes(batch), strict=True):
            prod.produce(
                self.join_topic,
                key=asset_id.encode(),
                value=note,
                headers=RESULT_HEADERS,
                partition=join_partition(asset_id, self.partitions),
                on_delivery=tracker,
            )


@dataclass(frozen=True)
class RouterTopics:
    """The topics the router reads (a `topics` attribute, as startup.topic_needs reads)."""

    topics: tuple[str, ...]

    @classmethod
    def of(cls, settings: FeaturesSettings) -> RouterTopics:
        t = settings.kafka.topics
        return cls((t.sensor_windows, t.camera_images, t.inference_results, t.feedback_labels))


def loop(settings: FeaturesSettings, metrics: FeaturesMetrics) -> BatchLoop[int]:
    config = LoopConfig(
        kafka=settings.kafka,
        group_id=f"{settings.faust_app_id}-router",
        topics=list(RouterTopics.of(settings).topics),
        policy=BatchPolicy(ROUTER_BATCH, 0.0),
        session_timeout_ms=int(settings.session_timeout_s * 1000),
    )
    return BatchLoop(config, JoinRouter(settings, metrics), LoopMetrics(metrics.batch_failures))


class RouterThread(threading.Thread):
    """The router's loop in a thread of the join worker; `on_failure` is called if it dies."""

    def __init__(
        self, settings: FeaturesSettings, metrics: FeaturesMetrics, on_failure: Callable[[], None]
    ) -> None:
        super().__init__(name="join-router", daemon=True)
        self._loop = loop(settings, metrics)
        self._stop_flag = threading.Event()
        self._on_failure = on_failure

    def run(self) -> None:
        try:
            self._loop.run(self._stop_flag.is_set)
        except (KafkaException, RuntimeError, OSError):
            log.exception("the join router stopped")
            self._on_failure()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop_flag.set()
        self.join(timeout_s)
