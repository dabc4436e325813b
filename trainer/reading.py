"""How the trainer reads training.windows and drift.signals into its models' training sets.

Reading. The trainer reads training.windows with manual partition assignment and keeps, per
modality, a bounded training set ordered by event time. It also reads drift.signals.

Restart recovery (no local state). At start it reads the registry: each model's newest version
trained from training.windows names, in its lineage, the offset ranges it was trained on. The
trainer re-reads every partition from the smallest of those start offsets (from the earliest
retained offset for a partition or model with no such lineage), which rebuilds the training
set the last run saw plus everything after it; records at or past a lineage's end offsets count
as new labels. Drift signals are re-read from the time of each model's last run. Until the
trainer has caught up with the end offsets it saw at start, no training is triggered, so a
restart never trains on half its history.

Dead letters. A labelled window that cannot be learned from (wrong shape, unknown class,
missing input, undecodable) goes to training.windows.dlq with the reason. The consumer group's
committed offsets record how far dead-lettering has got (they are committed after the dead
letters are acknowledged), so a restart that re-reads older records does not dead-letter them
twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas.messages import DriftSignal
from driftline.schemas.topics import TRAINING_WINDOWS
from driftline.services.runtime import registry
from driftline.services.runtime.deadletters import describe, dlq_record
from driftline.services.runtime.kafka import Record, send_all
from driftline.trainer.dataset import Example
from driftline.trainer.inputs import decode_labelled
from driftline.trainer.metrics import TrainerMetrics
from driftline.trainer.modelstate import ModelState, buffer_text, take_signal
from driftline.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


class WindowReader:
    """Assigns the trainer's partitions and folds what it consumes into the models' states."""

    def __init__(
        self,
        settings: TrainerSettings,
        metrics: TrainerMetrics,
        states: Mapping[str, ModelState],
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.states = states
        self.by_name = {s.name: s for s in states.values()}
        topics = settings.kafka.topics
        self.source = topics.training_windows
        self.dlq_topic = topics.dlq(TRAINING_WINDOWS)
        self.signals_topic = topics.drift_signals
        self.caught_up = threading.Event()
        self._committed: dict[int, int] = {}
        self._catchup: dict[int, int] = {}

    # -- start-up: where to read from ------------------------------------------------------

    def _recover(self, snapshot: registry.RegistrySnapshot) -> dict[int, int]:
        """Per-model state from the registry; returns the start offset per known partition."""
        starts: dict[int, int] = {}
        complete = True
        for state in self.states.values():
            versions = sorted(
                snapshot.versions.get(state.name, {}).values(), key=lambda v: v.version
            )
            if versions:
                state.last_run_ms = versions[-1].created_time_ms
            trained = [v for v in versions if v.lineage.source == self.source]
            if not trained:
                complete = False
                continue
            last = trained[-1]
            state.trained_through = {r.partition: r.end_offset for r in last.lineage.ranges}
            if last.lineage.change_point_ms is not None:
                state.regime_start_ms = last.lineage.change_point_ms
                state.regime_version = last.lineage.parent_version
                state.regime_id = 1
                state.post_change_at_last_run = int(last.metrics.get("post_change_examples", 0))
                # A regime whose last version was not promoted is still waiting for its model.
                state.adapting = last.status != "champion"
            for r in last.lineage.ranges:
                starts[r.partition] = min(starts.get(r.partition, r.start_offset), r.start_offset)
            log.info(
                "%s: last trained as v%d on %s",
                state.name,
                last.version,
                ", ".join(
                    f"p{r.partition}[{r.start_offset},{r.end_offset})" for r in last.lineage.ranges
                ),
            )
        return starts if complete else {}

    def assign(self, consumer: Consumer, snapshot: registry.RegistrySnapshot) -> None:
        timeout = self.settings.registry_timeout_s
        meta = consumer.list_topics(timeout=timeout)
        for topic in (self.source, self.signals_topic):
            if topic not in meta.topics or meta.topics[topic].error is not None:
                raise RuntimeError(f"topic {topic!r} not found; run `driftline topics create`")
        starts = self._recover(snapshot)
        parts = sorted(meta.topics[self.source].partitions)
        assigned: list[TopicPartition] = []
        committed = consumer.committed(
            [TopicPartition(self.source, p) for p in parts], timeout=timeout
        )
        for tp in committed:
            self._committed[tp.partition] = max(tp.offset, 0)
        for p in parts:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.source, p), timeout=timeout
            )
            first = max(starts[p], low) if p in starts else low
            assigned.append(
                TopicPartition(self.source, p, first if p in starts else OFFSET_BEGINNING)
            )
            if high > first:
                self._catchup[p] = high
        since = min((s.last_run_ms or 0 for s in self.states.values()), default=0)
        signal_parts = [
            TopicPartition(self.signals_topic, p, since)
            for p in sorted(meta.topics[self.signals_topic].partitions)
        ]
        # The first signal at or after the oldest last run (OFFSET_END when there is none).
        assigned.extend(consumer.offsets_for_times(signal_parts, timeout=timeout))
        consumer.assign(assigned)
        if not self._catchup:
            self.caught_up.set()
        log.info(
            "reading %s from %s; catching up to %s",
            self.source,
            {tp.partition: tp.offset for tp in assigned if tp.topic == self.source},
            self._catchup,
        )

    # -- consuming ---------------------------------------------------------------------------

    def process(self, consumer: Consumer, msgs: list[Message]) -> None:
        """Buffer a batch's labelled windows, take its drift signals, dead-letter the rest."""
        letters: list[tuple[Message, dl.CodecError]] = []
        advanced: dict[int, int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.topic() == self.source:
                        self._catchup.pop(msg.partition() or 0, None)
                else:
                    log.warning("consumer error: %s", err)
                continue
            if msg.topic() == self.signals_topic:
                self._on_signal(msg)
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            target = self._catchup.get(partition)
            if target is not None and offset + 1 >= target:
                del self._catchup[partition]
            self.metrics.consumed.labels(self.source).inc()
            try:
                example = decode_labelled(msg.value(), codec.content_type_of(msg.headers()))
            except dl.CodecError as exc:
                if offset >= self._committed.get(partition, 0):
                    letters.append((msg, exc))
            else:
                state = self.states[example.modality]
                served = example.served_version
                state.buffer.add(
                    Example(
                        example.event_time_ms,
                        partition,
                        offset,
                        example.label,
                        example.x,
                        served_version=served if served is not None else -1,
                        served_correct=bool(example.served_correct),
                    )
                )
                state.added_since_detect += 1
                if offset >= state.trained_through.get(partition, 0):
                    state.new_labels += 1
            advanced[partition] = max(advanced.get(partition, -1), offset + 1)
        if letters:
            self._dead_letter(letters)
        # Dead letters of these offsets are acknowledged: record how far dead-lettering got.
        commits = [
            TopicPartition(self.source, p, o)
            for p, o in advanced.items()
            if o > self._committed.get(p, 0)
        ]
        if commits:
            consumer.commit(offsets=commits, asynchronous=False)
            for tp in commits:
                self._committed[tp.partition] = tp.offset
        if not self._catchup and not self.caught_up.is_set():
            self.caught_up.set()
            log.info("caught up: %s", buffer_text(self.states.values()))

    def _dead_letter(self, letters: list[tuple[Message, dl.CodecError]]) -> None:
        """Write a batch's dead letters, acknowledged, before its offsets are committed.

        Through `send_all`: a producer that goes fatal is replaced and the letters are sent
        again (a copy may repeat, none is lost); what still fails raises, and the trainer
        stops with the batch uncommitted, to read it again when it restarts.
        """
        records: list[Record] = []
        for msg, exc in letters:
            rec = dlq_record(msg, exc, self.settings.service_name)
            records.append((rec.key, rec.value, rec.headers))
            self.metrics.dead_letters.labels(self.source, exc.error_class).inc()
            log.warning(describe(rec.envelope))
        send_all(self.settings.kafka, self.dlq_topic, records)

    def _on_signal(self, msg: Message) -> None:
        try:
            signal = codec.decode(DriftSignal, msg.value(), codec.content_type_of(msg.headers()))
        except dl.CodecError as exc:
            log.warning("ignoring an undecodable drift signal: %s", exc)
            return
        state = self.by_name.get(signal.model_name)
        if state is not None:
            take_signal(state, signal)
