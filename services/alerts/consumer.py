"""The alerting consumer: inference results in, through the alert rule, alerts out.

Delivery is at-least-once, one batch at a time: the batch's alerts and dead letters are
produced and every delivery report checked, then each alert goes to the webhook (delivered,
rejected, or failed after its retries: a webhook that stays down never holds the stream), and
only then are the input offsets committed. A failure before the commit undoes the batch's
changes to the rule's state and seeks back, so the replay decides exactly as before and the
alerts it produces again carry the same ids.

The rule's state lives in memory. So that a restart (or a partition moving here) rebuilds it,
each newly assigned partition is read from up to `replay_lookback` records before its
committed offset: those records feed the state and produce nothing, since they were handled
before. Given enough lookback, alerts after a crash are the ones the uninterrupted run would
have raised, with the same ids.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.messages import Alert, InferenceResult
from driftline.schemas.topics import INFERENCE_RESULTS
from driftline.services.alerts.settings import AlertsSettings
from driftline.services.alerts.webhook import SKIPPED, WebhookSender
from driftline.services.core.alerting import SUPPRESSIONS, AlertEngine, Observation, RaisedAlert
from driftline.services.core.batching import Batcher, BatchPolicy
from driftline.services.core.scoring import commit_offsets, rewind_offsets
from driftline.services.runtime.deadletters import describe, dlq_record
from driftline.services.runtime.kafka import (
    DeliveryTracker,
    consumer_config,
    flush_or_raise,
    position,
    producer,
)
from driftline.services.runtime.metrics import AlertsMetrics, Health

log = logging.getLogger(__name__)

AVRO_HEADERS: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]
RETRY_BACKOFF_S = 0.5
IDLE_POLL_S = 0.1
BROKER_TIMEOUT_S = 10.0


@dataclass
class BatchStats:
    """What one committed batch did; `outcomes` counts the rule's decisions by outcome."""

    consumed: int = 0
    replayed: int = 0
    alerts: list[Alert] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    webhook: Counter[str] = field(default_factory=Counter)


def to_alert(raised: RaisedAlert) -> Alert:
    return Alert(
        alert_id=raised.alert_id,
        asset_id=raised.asset_id,
        severity=raised.severity,
        reason=raised.reason,
        predicted_class=raised.predicted_class,
        evidence_event_ids=list(raised.evidence_event_ids),
        model_name=raised.model_name,
        model_version=raised.model_version,
        raised_time_ms=raised.raised_time_ms,
    )


def observation(result: InferenceResult) -> Observation:
    return Observation(
        event_id=result.event_id,
        asset_id=result.asset_id,
        predicted_class=result.predicted_class,
        confidence=result.confidence,
        event_time_ms=result.event_time_ms,
        model_name=result.model_name,
        model_version=result.model_version,
    )


class AlertsConsumer:
    """Reads inference.results, applies the alert rule, publishes alerts and calls the webhook."""

    def __init__(
        self,
        settings: AlertsSettings,
        metrics: AlertsMetrics,
        webhook: WebhookSender | None = None,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.webhook = webhook
        self.health = health
        topics = settings.kafka.topics
        self.source = topics.inference_results
        self.alerts_topic = topics.alerts
        self.dlq_topic = topics.dlq(INFERENCE_RESULTS)
        self.engine = AlertEngine(settings.rules)
        self.assigned: set[tuple[str, int]] = set()
        # Per partition: records below this offset were handled before; they only feed state.
        self.replay_until: dict[tuple[str, int], int] = {}
        self._batcher: Batcher[Message] = Batcher(
            BatchPolicy(settings.max_batch, settings.batch_wait_s)
        )

    # Rebalance callbacks run inside consume(), between batches: no batch is half done.

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in parts)
        log.info("assigned partitions %s", sorted(p.partition for p in parts))
        if self.settings.replay_lookback <= 0:
            return  # the client assigns them at their committed offsets
        try:
            starts = self._lookback_starts(consumer, parts)
        except KafkaException as exc:
            log.warning("not rebuilding alert state (starting at committed offsets): %s", exc)
            starts = parts
        consumer.incremental_assign(starts)

    def _lookback_starts(
        self, consumer: Consumer, parts: list[TopicPartition]
    ) -> list[TopicPartition]:
        lookback = self.settings.replay_lookback
        starts: list[TopicPartition] = []
        replay: dict[tuple[str, int], int] = {}
        for tp in consumer.committed(parts, timeout=BROKER_TIMEOUT_S):
            committed = tp.offset
            marks = (
                consumer.get_watermark_offsets(tp, timeout=BROKER_TIMEOUT_S)
                if committed >= 0
                else None
            )
            if marks is None:  # nothing committed yet: auto.offset.reset decides
                starts.append(TopicPartition(tp.topic, tp.partition))
                continue
            start = max(marks[0], committed - lookback)
            if start < committed:
                replay[(tp.topic, tp.partition)] = committed
            starts.append(TopicPartition(tp.topic, tp.partition, start))
        self.replay_until.update(replay)
        if replay:
            log.info("rebuilding alert state from before the committed offsets %s", replay)
        return starts

    def _on_revoke(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in parts}
        self.assigned.difference_update(revoked)
        # Records taken but not processed are dropped uncommitted; the next owner reads them.
        dropped = self._batcher.discard(lambda m: (m.topic(), m.partition()) in revoked)
        # The next owner rebuilds these assets' state from its own lookback.
        forgotten = self.engine.forget_shards(p for _t, p in revoked)
        for key in revoked:
            self.replay_until.pop(key, None)
        self.metrics.assets_tracked.set(len(self.engine))
        log.info(
            "revoked partitions %s (%d records dropped, %d assets forgotten)",
            sorted(p.partition for p in parts),
            dropped,
            forgotten,
        )

    def run(
        self, stop: Callable[[], bool], on_batch: Callable[[BatchStats], None] | None = None
    ) -> None:
        """Consume until stop() is true, finish the records in hand, then leave the group."""
        consumer = Consumer(consumer_config(self.settings.kafka, self.settings.group_id))
        prod = producer(self.settings.kafka)
        tracker = DeliveryTracker()
        consumer.subscribe(
            [self.source],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        batcher = self._batcher
        try:
            while True:
                stopping = stop()
                if self.health is not None:
                    self.health.tick()
                if not stopping:
                    wait = batcher.wait_s(time.monotonic(), IDLE_POLL_S)
                    got = consumer.consume(num_messages=batcher.room(), timeout=wait)
                    batcher.add(got, time.monotonic())
                    if not batcher.ready(time.monotonic()):
                        continue
                elif not len(batcher):
                    break
                msgs = batcher.take()
                try:
                    stats = self.process(consumer, prod, tracker, msgs)
                except (KafkaException, BufferError) as exc:
                    log.warning("batch not committed, rewinding to retry it: %s", exc)
                    self.metrics.batch_failures.labels("deliver").inc()
                    self._rewind(consumer, msgs)
                    if stopping:
                        break  # uncommitted: replayed by whoever reads the partition next
                    time.sleep(RETRY_BACKOFF_S)
                    continue
                if on_batch is not None:
                    on_batch(stats)
        finally:
            prod.flush(BROKER_TIMEOUT_S)
            consumer.close()

    def _rewind(self, consumer: Consumer, msgs: list[Message]) -> None:
        starts = rewind_offsets(position(m) for m in msgs if m.error() is None)
        for (topic, partition), offset in starts.items():
            if (topic, partition) in self.assigned:
                consumer.seek(TopicPartition(topic, partition, offset))

    def process(
        self, consumer: Consumer, prod: Producer, tracker: DeliveryTracker, msgs: list[Message]
    ) -> BatchStats:
        """Apply the rule to one batch, deliver its alerts, then commit its offsets."""
        good: list[Message] = []
        for m in msgs:
            if m.error() is None:
                good.append(m)
            else:
                log.warning("consumer error: %s", m.error())
        if not good:
            return BatchStats()
        tracker.reset()
        self.engine.begin()
        try:
            stats = self._apply(prod, tracker, good)
            # Alerts and dead letters acknowledged: now the webhook, then the commit.
            flush_or_raise(prod, tracker, self.settings.flush_timeout_s)
            if self.webhook is not None:
                self._call_webhook(self.webhook, stats)
            offsets = commit_offsets(position(m) for m in good)
            committed = consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
            failed = [tp for tp in committed or [] if tp.error is not None]
            if failed:
                raise KafkaException(KafkaError(KafkaError._FAIL, f"commit failed: {failed[0]}"))
        except BaseException:
            # Undo the batch's state changes: the rewind replays it from the same state.
            self.engine.rollback()
            raise
        self.engine.commit()
        self._count(stats)
        return stats

    def _call_webhook(self, webhook: WebhookSender, stats: BatchStats) -> None:
        """Each alert of the batch to the webhook, within the batch's time budget."""
        deadline = time.monotonic() + self.settings.webhook_batch_budget_s
        for alert in stats.alerts:
            if time.monotonic() >= deadline:
                stats.webhook[SKIPPED] += 1
                continue
            stats.webhook[webhook.deliver(alert)] += 1
        if stats.webhook[SKIPPED]:
            log.error(
                "webhook %s: budget of %.0fs per batch spent, %d alerts not sent to it "
                "(they are on %s)",
                webhook.target,
                self.settings.webhook_batch_budget_s,
                stats.webhook[SKIPPED],
                self.alerts_topic,
            )

    def _apply(self, prod: Producer, tracker: DeliveryTracker, good: list[Message]) -> BatchStats:
        stats = BatchStats(consumed=len(good))
        for m in good:
            topic, partition, offset = position(m)
            replay = offset < self.replay_until.get((topic, partition), -1)
            stats.replayed += replay
            try:
                result = codec.decode(
                    InferenceResult, m.value(), codec.content_type_of(m.headers())
                )
            except dl.CodecError as error:
                if not replay:  # a replayed bad record was dead-lettered the first time
                    self._dead_letter(prod, tracker, m, error)
                    stats.dead_letters[error.error_class] += 1
                continue
            decision = self.engine.observe(observation(result), shard=partition)
            if replay:
                continue
            stats.outcomes[decision.outcome] += 1
            if decision.alert is not None:
                alert = to_alert(decision.alert)
                prod.produce(
                    self.alerts_topic,
                    key=alert.asset_id,
                    value=codec.encode(alert),
                    headers=AVRO_HEADERS,
                    on_delivery=tracker,
                )
                stats.alerts.append(alert)
                stats.rules.append(decision.alert.rule)
                log.info(
                    "alert %s %s for %s: %s",
                    alert.alert_id,
                    alert.severity,
                    alert.asset_id,
                    alert.reason,
                )
        return stats

    def _dead_letter(
        self, prod: Producer, tracker: DeliveryTracker, msg: Message, error: dl.CodecError
    ) -> None:
        rec = dlq_record(msg, error, self.settings.service_name)
        prod.produce(
            self.dlq_topic, key=rec.key, value=rec.value, headers=rec.headers, on_delivery=tracker
        )
        log.info(describe(rec.envelope))

    def _count(self, stats: BatchStats) -> None:
        """Metrics of a committed batch (counted once, even if earlier tries were rewound)."""
        m = self.metrics
        m.consumed.labels(self.source).inc(stats.consumed - stats.replayed)
        for reason, count in stats.dead_letters.items():
            m.dead_letters.labels(self.source, reason).inc(count)
            m.produced.labels(self.dlq_topic).inc(count)
        if stats.alerts:
            m.produced.labels(self.alerts_topic).inc(len(stats.alerts))
        for alert, rule in zip(stats.alerts, stats.rules, strict=True):
            m.raised.labels(alert.severity, rule).inc()
        for outcome in SUPPRESSIONS:
            if stats.outcomes[outcome]:
                m.suppressed.labels(outcome).inc(stats.outcomes[outcome])
        for outcome, count in stats.webhook.items():
            m.webhook_deliveries.labels(outcome).inc(count)
        m.assets_tracked.set(len(self.engine))
