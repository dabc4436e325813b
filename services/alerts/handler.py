"""The alerting handler: inference results in, through the alert rule, alerts out.

Delivery is at-least-once, one batch at a time: the batch's alerts and dead letters are
produced and every delivery report checked, then each alert goes to the webhook (delivered,
rejected, or failed after its retries: a webhook that stays down never holds the stream) and
the batch's alert changes (raised, resolved) to Alertmanager in one POST; each alert the webhook
or Alertmanager did not take (rejected, failed, or skipped once the batch's budget was spent)
is produced to alerts.dlq with the reason and acknowledged, and only then are the input
offsets committed: a crash before the commit replays the batch, so no alert vanishes. A
failure before the commit undoes the batch's changes to the rule's state and seeks back, so
the replay decides exactly as before and the alerts it produces again carry the same ids.

The rule's state lives in memory. So that a restart (or a partition moving here) rebuilds it,
each newly assigned partition is read from up to `replay_lookback` records before its
committed offset: those records feed the state and produce nothing, since they were handled
before. Given enough lookback, alerts after a crash are the ones the uninterrupted run would
have raised, with the same ids, and the active alerts Alertmanager is re-sent are rebuilt too.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.messages import Alert, InferenceResult
from driftline.schemas.topics import ALERTS, INFERENCE_RESULTS
from driftline.services.alerts.alertmanager import AlertmanagerPath
from driftline.services.alerts.metrics import AlertsMetrics
from driftline.services.alerts.records import observation, placed, to_alert
from driftline.services.alerts.settings import AlertsSettings
from driftline.services.alerts.webhook import (
    DELIVERED,
    FAILED,
    REJECTED,
    SKIPPED,
    WebhookSender,
)
from driftline.services.core.alerting import RESOLVED, SUPPRESSIONS, AlertEngine, RaisedAlert
from driftline.services.core.scoring import commit_offsets
from driftline.services.runtime.batchloop import Offsets
from driftline.services.runtime.deadletters import alert_dlq_record, describe, dlq_record
from driftline.services.runtime.kafka import (
    DeliveryTracker,
    RenewableProducer,
    flush_or_raise,
    position,
)

log = logging.getLogger(__name__)

BROKER_TIMEOUT_S = 10.0

# The dead-letter reason of each webhook outcome that leaves an alert undelivered.
UNDELIVERED_REASONS = {
    FAILED: dl.WEBHOOK_FAILED,
    REJECTED: dl.WEBHOOK_REJECTED,
    SKIPPED: dl.WEBHOOK_SKIPPED,
}


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
    # Where each alert landed on the alerts topic (alert id -> partition, offset).
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    undelivered: Counter[str] = field(default_factory=Counter)
    # The batch's alert changes in order, for Alertmanager: (alert, firing) raised or ended.
    changes: list[tuple[RaisedAlert, bool]] = field(default_factory=list)


class AlertsHandler:
    """Applies the alert rule to batches of results, publishes alerts, calls the webhook."""

    def __init__(
        self,
        settings: AlertsSettings,
        metrics: AlertsMetrics,
        webhook: WebhookSender | None = None,
        alertmanager: AlertmanagerPath | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.webhook = webhook
        self.alertmanager = alertmanager
        topics = settings.kafka.topics
        self.source = topics.inference_results
        self.alerts_topic = topics.alerts
        self.dlq_topic = topics.dlq(INFERENCE_RESULTS)
        self.alerts_dlq_topic = topics.dlq(ALERTS)
        self.engine = AlertEngine(settings.rules)
        # Per partition: records below this offset were handled before; they only feed state.
        self.replay_until: dict[tuple[str, int], int] = {}
        self.tracker = DeliveryTracker()
        self._consumer: Consumer | None = None
        self._producer: RenewableProducer | None = None

    # The loop's side of the handler; rebalances come between batches: none is half done.

    def start(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._producer = RenewableProducer(self.settings.kafka)

    def assigned(
        self, consumer: Consumer, parts: list[TopicPartition]
    ) -> list[TopicPartition] | None:
        if self.settings.replay_lookback <= 0:
            return None  # the client assigns them at their committed offsets
        try:
            return self._lookback_starts(consumer, parts)
        except KafkaException as exc:
            log.warning("not rebuilding alert state (starting at committed offsets): %s", exc)
            return parts

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

    def revoked(self, parts: list[TopicPartition]) -> Offsets | None:
        revoked = {(p.topic, p.partition) for p in parts}
        # The next owner rebuilds these assets' state from its own lookback.
        forgotten = self.engine.forget_shards(p for _t, p in revoked)
        for key in revoked:
            self.replay_until.pop(key, None)
        self.metrics.assets_tracked.set(len(self.engine))
        log.info("forgot %d assets of revoked partitions", forgotten)
        return None

    def idle(self) -> None:
        """Nothing waits between batches (each is committed before the next); re-send the
        active alerts to Alertmanager when that is due."""
        self._resend_if_due()

    def _resend_if_due(self) -> None:
        am = self.alertmanager
        if am is not None and am.resend_due():
            am.resend(self.engine.active_alerts())
            self._count_posts(am)

    def _count_posts(self, am: AlertmanagerPath) -> None:
        for (purpose, outcome), count in am.posts.items():
            self.metrics.alertmanager_posts.labels(purpose, outcome).inc(count)
        am.posts.clear()

    def recover(self, waited_s: float) -> None:
        """Nothing to settle before reading again."""

    def abandon(self) -> None:
        """The batch's state changes were undone by handle(); its outputs may be sent again."""

    def close(self) -> None:
        if self._producer is not None:
            self._producer.producer.flush(BROKER_TIMEOUT_S)

    def handle(self, msgs: list[Message]) -> BatchStats:
        """Apply the rule to one batch, deliver its alerts, then commit its offsets."""
        if self._consumer is None or self._producer is None:
            raise RuntimeError("the handler delivers only once started")
        consumer, renewable, tracker = self._consumer, self._producer, self.tracker
        prod = renewable.producer
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
            undelivered = []
            if self.webhook is not None:
                undelivered += self._call_webhook(self.webhook, stats)
            if self.alertmanager is not None:
                undelivered += self.alertmanager.deliver_batch(stats.changes, stats.alerts)
            if undelivered:
                # Acknowledged before the commit: a crash replays these, never loses them.
                self._dead_letter_alerts(prod, tracker, stats, undelivered)
                flush_or_raise(prod, tracker, self.settings.flush_timeout_s)
            offsets = commit_offsets(position(m) for m in good)
            committed = consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
            failed = [tp for tp in committed or [] if tp.error is not None]
            if failed:
                raise KafkaException(KafkaError(KafkaError._FAIL, f"commit failed: {failed[0]}"))
        except BaseException as exc:
            # Undo the batch's state changes: the rewind replays it from the same state.
            self.engine.rollback()
            renewable.note(tracker.fatal)
            renewable.renew_if_fatal(exc)  # a fatal producer would fail every later batch
            raise
        self.engine.commit()
        self._count(stats)
        self._resend_if_due()
        return stats

    def _call_webhook(
        self, webhook: WebhookSender, stats: BatchStats
    ) -> list[tuple[Alert, dl.Undelivered]]:
        """Each alert of the batch to the webhook, within the batch's time budget.

        Returns the alerts it did not take, each with the reason for its dead letter.
        """
        budget_s = self.settings.webhook_batch_budget_s
        deadline = time.monotonic() + budget_s
        undelivered: list[tuple[Alert, dl.Undelivered]] = []
        for alert in stats.alerts:
            if time.monotonic() >= deadline:
                outcome = SKIPPED
                why = f"the batch's webhook budget of {budget_s:g}s was spent before it was sent"
            else:
                outcome = webhook.deliver(alert)
                why = webhook.last_error
            stats.webhook[outcome] += 1
            if outcome != DELIVERED:
                reason = UNDELIVERED_REASONS[outcome]
                message = f"webhook {webhook.target}: {outcome}: {why}"
                undelivered.append((alert, dl.Undelivered(reason, message)))
        if stats.webhook[SKIPPED]:
            log.error(
                "webhook %s: budget of %.0fs per batch spent, %d alerts not sent to it "
                "(they are on %s and %s)",
                webhook.target,
                budget_s,
                stats.webhook[SKIPPED],
                self.alerts_topic,
                self.alerts_dlq_topic,
            )
        return undelivered

    def _dead_letter_alerts(
        self,
        prod: Producer,
        tracker: DeliveryTracker,
        stats: BatchStats,
        undelivered: list[tuple[Alert, dl.Undelivered]],
    ) -> None:
        """Each alert not taken onto alerts.dlq, with where it is on the alerts topic."""
        for alert, reason in undelivered:
            partition, offset = stats.positions.get(alert.alert_id, (-1, -1))
            rec = alert_dlq_record(
                alert, (self.alerts_topic, partition, offset), reason, self.settings.service_name
            )
            prod.produce(
                self.alerts_dlq_topic,
                key=rec.key,
                value=rec.value,
                headers=rec.headers,
                on_delivery=tracker,
            )
            stats.undelivered[reason.error_class] += 1
            log.warning("alert %s %s", alert.alert_id, describe(rec.envelope))

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
            if decision.ended is not None:
                stats.changes.append((decision.ended, False))
            if decision.alert is not None:
                stats.changes.append((decision.alert, True))
                alert = to_alert(decision.alert)
                prod.produce(
                    self.alerts_topic,
                    key=alert.asset_id,
                    value=codec.encode(alert),
                    headers=h.AVRO,
                    on_delivery=placed(tracker, stats.positions, alert.alert_id),
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
        if stats.outcomes[RESOLVED]:
            m.resolved.inc(stats.outcomes[RESOLVED])
        if self.alertmanager is not None:
            self._count_posts(self.alertmanager)
        for outcome, count in stats.webhook.items():
            m.webhook_deliveries.labels(outcome).inc(count)
        for reason, count in stats.undelivered.items():
            m.dead_lettered.labels(reason).inc(count)
            m.produced.labels(self.alerts_dlq_topic).inc(count)
        m.assets_tracked.set(len(self.engine))
