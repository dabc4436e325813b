"""What the features app does with each batch of records, free of faust: the agents call this.

The faust agents hand over batches of raw records (`RawRecord`) and send what comes back out
through an `Outbox`, so the same pipeline runs in the app, in `rebuild` and in tests with
in-memory tables and stores.

Delivery: records a batch produces (forwarded join records, labelled windows, dead letters)
are sent inside the agent, attached by faust to the batch's offsets, so an offset is committed
only after what it produced is acknowledged (at-least-once). Redis is written by the flush
timer from the changelog-backed state, never inline: a Redis outage delays the writes and loses
nothing, and the consumers keep going.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.messages import DriftSignal, ModelVersion
from driftline.schemas.result_batch import ResultDecoder
from driftline.schemas.topics import INFERENCE_RESULTS
from driftline.services.features import join as j
from driftline.services.features import joinrecords as jr
from driftline.services.features.accuracy import AccuracyBook, Version
from driftline.services.features.drift import DriftBook
from driftline.services.features.joinstage import JoinStage
from driftline.services.features.liveaccuracy import LiveAccuracy
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.readback import InputReader
from driftline.services.features.records import Outbox, RawRecord, ResultRecords
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.stats import StatsAggregator, StatsConfig
from driftline.services.features.store import SENTINEL_KEY, FeatureStore, HashWrite
from driftline.services.features.tables import StateTable

# RawRecord lives in services.features.records; rebuild, bench and latebench import it from here.

log = logging.getLogger(__name__)


@dataclass
class PipelineTables:
    stats: StateTable | None = None
    states: StateTable | None = None
    parked: StateTable | None = None
    index: StateTable | None = None  # the join's time-ordered keys (services.features.join)
    accuracy: StateTable | None = None


class FeaturesPipeline:
    """Windowed statistics, label join, live accuracy and drift, behind batch handlers."""

    def __init__(
        self,
        settings: FeaturesSettings,
        metrics: FeaturesMetrics,
        store: FeatureStore,
        outbox: Outbox,
        tables: PipelineTables,
        *,
        registry: Callable[[], Mapping[Version, ModelVersion]] | None = None,
        reader: InputReader | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.outbox = outbox
        self.registry = registry
        s = settings
        topics = s.kafka.topics
        self.topics = topics
        self.prefix = s.redis_key_prefix
        self.stats: StatsAggregator | None = None
        self.decoder = ResultDecoder()  # remembers the model versions' layouts across batches
        if tables.stats is not None:
            self.stats = StatsAggregator(
                StatsConfig(
                    spec=s.windows,
                    low_threshold=s.low_confidence,
                    lateness_ms=s.allowed_lateness_s * 1000,
                    key_prefix=s.redis_key_prefix,
                    stats_ttl_ms=s.stats_ttl_s * 1000,
                    latest_ttl_ms=s.latest_ttl_s * 1000,
                ),
                tables.stats,
            )
        self.live: LiveAccuracy | None = None
        self.accuracy: AccuracyBook | None = None
        if tables.accuracy is not None:
            self.live = LiveAccuracy(s, metrics, tables.accuracy, registry)
            self.accuracy = self.live.book
        self.drift = DriftBook(
            window_ms=s.drift_window_s * 1000,
            max_samples=s.drift_max_samples,
            min_samples=s.drift_min_samples,
            threshold=s.drift_threshold,
        )
        self.join: j.JoinProcessor | None = None
        if tables.states is not None and tables.parked is not None:
            assert tables.index is not None, "the join needs its index table"
            self.join = j.JoinProcessor(
                tables.states,
                tables.parked,
                tables.index,
                partitions=s.join_partitions,
                retention_ms=s.join_retention_s * 1000,
                grace_ms=s.join_grace_s * 1000,
                label_wait_ms=s.label_wait_s * 1000,
                on_pair=self.drift.add_pair,
                on_scored=self.live.on_scored if self.live is not None else None,
                on_outcome=self.live.on_outcome if self.live is not None else None,
            )
        self.joining = JoinStage(
            s, metrics, outbox, self._dead_letter, join=self.join, reader=reader
        )
        self.join_topic = self.joining.join_topic
        self.reader = reader  # reads labelled events' inputs back from Kafka (the join's)
        self._extra: dict[str, HashWrite] = {}  # drift hashes waiting for the next flush
        self._retry_at = 0.0
        self._backoff = 0.0
        self.flushes = 0
        self._recovering = False

    # ---- statistics (inference.results) -------------------------------------------------

    async def on_results(self, records: Sequence[RawRecord], *, forward: bool) -> None:
        """Decode a batch of results; fold them into the windows and forward them to the join."""
        if records:
            await self.on_result_columns(ResultRecords.of(records), forward=forward)

    async def on_result_columns(self, records: ResultRecords, *, forward: bool) -> None:
        """on_results of a batch given as columns (the batch loop's, without a RawRecord each).

        The batch is decoded to columns (schemas.result_batch.ResultDecoder) and folded as a
        whole; no Python object is made per result on the statistics path.
        """
        m = self.metrics
        if not records.values:
            return
        batch = self.decoder.decode(records.values, records.content_types)
        if batch.failures:
            m.events.labels("undecodable").inc(len(batch.failures))
            if self.stats is not None:  # one dead letter per bad record: the stats role's
                topic = self.topics.dlq(INFERENCE_RESULTS)
                for pos, exc in batch.failures:
                    await self._dead_letter(records.record(pos), exc, topic)
        if forward:
            for asset_id, note in zip(batch.asset_ids, jr.result_notes(batch), strict=True):
                await self.joining.forward(asset_id, note, jr.KIND_RESULT)
        m.consumed.labels(records.topic).inc(len(records.values))
        if self.stats is not None and len(batch):
            rows = batch.positions
            if len(rows) == len(records.values):
                parts = np.asarray(records.partitions, dtype=np.int64)
                offsets = np.asarray(records.offsets, dtype=np.int64)
            else:
                parts = np.asarray([records.partitions[p] for p in rows], dtype=np.int64)
                offsets = np.asarray([records.offsets[p] for p in rows], dtype=np.int64)
            report = self.stats.add(batch, parts, offsets)
            m.events.labels("accepted").inc(report.accepted)
            if report.late:
                m.events.labels("late").inc(report.late)
            if report.replayed:
                m.events.labels("replayed").inc(report.replayed)

    # ---- the join (services.features.joinstage) -----------------------------------------

    async def on_inputs(self, records: Sequence[RawRecord]) -> None:
        """Forward where each input lies (not the input) to the join, keyed by asset id."""
        await self.joining.on_inputs(records)

    async def on_labels(self, records: Sequence[RawRecord]) -> None:
        """Forward labels to the join by asset id; dead-letter those it could not use."""
        await self.joining.on_labels(records)

    async def on_join(self, records: Sequence[RawRecord]) -> None:
        """Join a batch; the inputs of every label it settles are read back in one go."""
        await self.joining.on_join(records)

    # ---- live accuracy from a rebuild (services.features.liveaccuracy) -------------------

    def on_labelled_windows(self, records: Sequence[RawRecord]) -> None:
        """Fold labelled windows into live accuracy (what `rebuild` replays)."""
        assert self.live is not None
        self.live.on_labelled_windows(records)

    def on_scored_results(self, records: Sequence[RawRecord]) -> None:
        """Count results as scored events, for a rebuild (each record once)."""
        assert self.live is not None
        self.live.on_scored_results(records)

    # ---- recovery and housekeeping -------------------------------------------------------

    def on_stats_recovered(self) -> None:
        if self.stats is not None:
            n = self.stats.restore(self.stats.table.items())
            log.info("recovered %d window buckets from the changelog", n)

    async def on_join_recovered(self) -> None:
        """Pick up the join's recovered tables: live accuracy is recounted from its events
        (LiveAccuracy.recover), waiting labels are decided again (JoinProcessor.retry_waiting).
        Housekeeping waits meanwhile: it would change what is being read."""
        self._recovering = True
        try:
            if self.join is not None:
                self.join.restore()
            if self.live is not None and self.join is not None:
                n = await self.live.recover(self.join)
                log.info("live accuracy recounted from %d events of the join", n)
            elif self.live is not None:
                self.live.book.restore()
            if self.live is not None:
                self.live.export_touched()
            if self.join is not None:
                await self.joining.settle(self.join.retry_waiting(), now=True)
        finally:
            self._recovering = False

    async def evict(self) -> None:
        """Housekeeping: settle labels whose wait is over, forget what is past retention."""
        if self._recovering:
            return
        if self.stats is not None:
            self.stats.evict()
        if self.join is not None:
            await self.joining.settle(self.join.due(), now=True)
            self.join.evict()
            self.metrics.join_entries.labels("events").set(len(self.join.states))
            self.metrics.join_entries.labels("waiting_labels").set(len(self.join.parked))

    # ---- drift ---------------------------------------------------------------------------

    async def check_drift(self, versions: Mapping[Version, ModelVersion]) -> list[DriftSignal]:
        """Evaluate drift of every version with new samples; publish and queue the results."""
        evaluations = self.drift.evaluate(
            versions,
            self.accuracy.snapshot if self.accuracy is not None else (lambda _v: None),
            key_prefix=self.prefix,
            ttl_ms=self.settings.latest_ttl_s * 1000,
        )
        m = self.metrics
        out: list[DriftSignal] = []
        for ev in evaluations:
            s = ev.signal
            labels = (s.model_name, str(s.model_version))
            for feature, score in s.feature_scores.items():
                m.drift_score.labels(*labels, feature).set(score)
            m.drift_score.labels(*labels, "max").set(s.score)
            m.drift_detected.labels(*labels).set(1 if s.drifted else 0)
            m.drift_samples.labels(*labels).set(s.sample_count)
            topic = self.topics.drift_signals
            # From a timer: no consumed record to attach to, so send now and wait for the ack.
            value = codec.encode(s)
            await self.outbox.send(topic, s.model_name.encode(), value, h.AVRO, wait=True)
            m.produced.labels(topic).inc()
            self._extra[ev.write.key] = ev.write
            out.append(s)
            log.info(
                "drift %s v%d: psi %.3f (%s) over %d samples",
                s.model_name,
                s.model_version,
                s.score,
                "drifted" if s.drifted else "stable",
                s.sample_count,
            )
        return out

    # ---- the feature store ---------------------------------------------------------------

    async def flush(self, *, now: float | None = None) -> bool:
        """Write everything changed since the last successful flush; False if it must retry.

        Failures back off exponentially (up to redis_retry_max_s) and keep every change
        pending, so the store lags while it is down and converges when it returns.
        """
        now = time.monotonic() if now is None else now
        if self.live is not None:  # gauges from memory, whether or not Redis is up
            self.live.export_touched()
        if now < self._retry_at:
            return False
        m = self.metrics
        try:
            if not await self.store.alive(SENTINEL_KEY.format(prefix=self.prefix)):
                # Redis came back without our data (restart without persistence, flush):
                # everything still held is written again.
                if self.flushes:
                    log.warning("feature store lost our keys; writing every window held again")
                if self.stats is not None:
                    self.stats.mark_all_dirty()
                if self.accuracy is not None:
                    self.accuracy.mark_all_dirty()
            writes: list[HashWrite] = []
            stats_snap = acc_snap = None
            if self.stats is not None:
                stats_writes, stats_snap = self.stats.pending()
                writes += stats_writes
            if self.accuracy is not None:
                acc_writes, acc_snap = self.accuracy.pending(
                    self.prefix, self.settings.latest_ttl_s * 1000
                )
                writes += acc_writes
            extra = dict(self._extra)
            writes += extra.values()
            t0 = time.perf_counter()
            if writes:
                await self.store.write(writes)
            m.flush_seconds.observe(time.perf_counter() - t0)
        except Exception as exc:  # redis raises ConnectionError, TimeoutError, OSError, ...
            self._backoff = min(
                max(2 * self._backoff, self.settings.flush_interval_s),
                self.settings.redis_retry_max_s,
            )
            self._retry_at = now + self._backoff
            m.store_errors.inc()
            m.store_up.set(0)
            log.warning("feature store write failed (retry in %.1fs): %s", self._backoff, exc)
            return False
        if stats_snap is not None and self.stats is not None:
            self.stats.settle(stats_snap)
        if acc_snap is not None and self.accuracy is not None:
            self.accuracy.settle(acc_snap)
        for key, w in extra.items():
            if self._extra.get(key) is w:
                del self._extra[key]
        for w in writes:
            m.writes.labels(_kind(w.key, self.prefix)).inc()
        self._backoff = 0.0
        self._retry_at = 0.0
        self.flushes += 1
        m.store_up.set(1)
        m.dirty_windows.set(len(self.stats.dirty) if self.stats is not None else 0)
        return True

    async def _dead_letter(self, rec: RawRecord, error: dl.CodecError, topic: str) -> None:
        letter = dl.dead_letter(
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            error=error,
            service=self.settings.service_name,
            key=rec.key,
            value=rec.value,
        )
        await self.outbox.send(topic, rec.key, rec.value or b"", dl.to_headers(letter, rec.headers))
        self.metrics.dead_letters.labels(rec.topic, error.error_class).inc()


def _kind(key: str, prefix: str) -> str:
    rest = key[len(prefix) :]
    return rest.split(":", 1)[0]
