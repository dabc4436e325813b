"""Read dead letters back, and replay them onto their source topic once the cause is fixed."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import Message

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.messages import Alert, DeadLetter
from driftline.schemas.topics import DLQ_SUFFIX
from driftline.services.runtime.kafka import DeliveryTracker, flush_or_raise, position, producer
from driftline.services.runtime.reader import ReadTo, TopicReader
from driftline.services.runtime.settings import KafkaSettings

REPLAY_GROUP = "driftline-dlq-replay"


@dataclass(frozen=True)
class Letter:
    """One dead letter: where it sits on the DLQ, why it is there, and the original record."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    envelope: DeadLetter
    headers: h.HeaderList
    content_type: str | None


@dataclass(frozen=True)
class DlqRecord:
    """What to produce on a DLQ for a consumed record: its key and bytes, reasons in headers."""

    key: bytes | None
    value: bytes | None
    headers: h.HeaderList
    envelope: DeadLetter


def dlq_record(msg: Message, error: dl.CodecError, service: str) -> DlqRecord:
    """The dead letter of a consumed record, every consumer's one way to build it."""
    topic, partition, offset = position(msg)
    envelope = dl.dead_letter(
        topic=topic,
        partition=partition,
        offset=offset,
        error=error,
        service=service,
        key=msg.key(),
        value=msg.value(),
    )
    return DlqRecord(msg.key(), msg.value(), dl.to_headers(envelope, msg.headers()), envelope)


def alert_dlq_record(
    alert: Alert, where: tuple[str, int, int], reason: dl.Undelivered, service: str
) -> DlqRecord:
    """The dead letter of an alert no webhook took, as the alerts topic holds it.

    Key the asset id, value the Avro alert, and `where` its place on the alerts topic
    (partition and offset -1 when unknown) as the source: `driftline dlq replay alerts`
    re-publishes it there.
    """
    topic, partition, offset = where
    key, value = alert.asset_id.encode(), codec.encode(alert)
    envelope = dl.dead_letter(
        topic=topic,
        partition=partition,
        offset=offset,
        error=reason,
        service=service,
        key=key,
        value=value,
    )
    return DlqRecord(key, value, dl.to_headers(envelope, h.AVRO), envelope)


def describe(letter: DeadLetter) -> str:
    """One log line's worth: where the record came from and why it was dead-lettered."""
    return (
        f"dead-lettered {letter.source_topic}[{letter.source_partition}]@{letter.source_offset}: "
        f"{letter.error_class}: {letter.error_message}"
    )


def dlq_topic_name(kafka: KafkaSettings, topic: str) -> str:
    """The DLQ name for a source topic or a DLQ name, prefixed or not (sensor.windows[.dlq])."""
    name = topic if topic.endswith(DLQ_SUFFIX) else topic + DLQ_SUFFIX
    prefix = kafka.topic_prefix
    return name if not prefix or name.startswith(prefix) else prefix + name


def _letter(topic: str, msg: Message) -> Letter:
    _, partition, offset = position(msg)
    hdrs = h.header_items(msg.headers())
    return Letter(
        dlq_topic=topic,
        dlq_partition=partition,
        dlq_offset=offset,
        envelope=dl.from_headers(hdrs, msg.key(), msg.value()),
        headers=hdrs,
        content_type=codec.content_type_of(hdrs),
    )


def _letters(
    reader: TopicReader, starts: dict[int, int] | None = None
) -> Iterator[tuple[Message, Letter]]:
    # Stop at the ends taken before reading: a replay feeds records back to the source, and
    # those that fail again land on this DLQ while we read it.
    ends = reader.ends()
    for msgs in reader.batches(starts, until=ReadTo(ends)):
        for msg in msgs:
            yield msg, _letter(reader.topic, msg)


def _reader(kafka: KafkaSettings, topic: str, name: str, timeout_s: float) -> TopicReader:
    return TopicReader(kafka, topic, name, timeout_s=timeout_s)


def inspect(kafka: KafkaSettings, topic: str, timeout_s: float = 10.0) -> list[Letter]:
    """Every dead letter on the topic, oldest first (reads without joining a group)."""
    name = dlq_topic_name(kafka, topic)
    with _reader(kafka, name, f"driftline-dlq-inspect-{uuid.uuid4().hex[:8]}", timeout_s) as r:
        return [letter for _, letter in _letters(r)]


@dataclass(frozen=True)
class ReplayReport:
    replayed: int
    skipped: int
    by_topic: dict[str, int]


def replay(
    kafka: KafkaSettings,
    topic: str,
    *,
    accept: Callable[[Letter], bool] = lambda _letter: True,
    dry_run: bool = False,
    from_start: bool = False,
    timeout_s: float = 10.0,
) -> ReplayReport:
    """Send dead letters back to their source topic with their original key, bytes and headers.

    Progress is kept as the offsets of the consumer group driftline-dlq-replay, committed
    only after the replayed records are acknowledged, so running replay twice sends nothing
    twice, and a crash mid-way resends at most the uncommitted tail. Letters that `accept`
    refuses are skipped (and counted), and stay on the DLQ for a later, wider replay only if
    --from-start is used.
    """
    name = dlq_topic_name(kafka, topic)
    prod = producer(kafka)
    tracker = DeliveryTracker()
    replayed, skipped = 0, 0
    by_topic: dict[str, int] = {}
    last: dict[int, int] = {}
    with _reader(kafka, name, REPLAY_GROUP, timeout_s) as reader:
        starts = None if from_start else reader.committed()
        for _, letter in _letters(reader, starts):
            last[letter.dlq_partition] = letter.dlq_offset
            source = letter.envelope.source_topic
            if not accept(letter) or not source:
                skipped += 1
                continue
            replayed += 1
            by_topic[source] = by_topic.get(source, 0) + 1
            if dry_run:
                continue
            original = [(k, v) for k, v in letter.headers if not k.startswith("driftline-")]
            prod.produce(
                source,
                key=letter.envelope.key,
                value=letter.envelope.value,
                headers=original,
                on_delivery=tracker,
            )
            prod.poll(0)
        if not dry_run:
            flush_or_raise(prod, tracker)
            if last:
                reader.commit({p: o + 1 for p, o in last.items()})
    return ReplayReport(replayed, skipped, by_topic)
