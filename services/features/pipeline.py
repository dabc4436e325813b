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

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.messages import (
    DriftSignal,
    InferenceResult,
    Label,
    LabelledWindow,
    ModelVersion,
)
from driftline.schemas.topics import FEEDBACK_LABELS, INFERENCE_RESULTS
from driftline.services.core.accuracy import calibration_factor
from driftline.services.core.join import (
    Decision,
    Prediction,
    StoredInput,
    label_problem,
    labelled_window,
)
from driftline.services.core.profile import CONFIDENCE_FEATURE
from driftline.services.features import join as j
from driftline.services.features.accuracy import AccuracyBook, Version, join_partition
from driftline.services.features.drift import DriftBook
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.readback import FetchedRecord, InputReader
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.stats import StatsAggregator, StatsConfig
from driftline.services.features.store import SENTINEL_KEY, FeatureStore, HashWrite
from driftline.services.features.tables import StateTable

log = logging.getLogger(__name__)

AVRO_HEADERS: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]


@dataclass(frozen=True)
class RawRecord:
    """One consumed Kafka record, as the pipeline sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: h.HeaderList = field(default_factory=list)

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v.encode() if isinstance(v, str) else v
        return None

    @property
    def content_type(self) -> str | None:
        return codec.content_type_of(self.headers)


class Outbox(Protocol):
    """Sends a record to a topic (in the app: a faust topic send, attached to the offsets)."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: h.HeaderList,
        *,
        wait: bool = False,
    ) -> None:
        """Send; with `wait`, now and until acknowledged, else when the source commits."""
        ...


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
        self.reader = reader  # reads labelled events' inputs back from Kafka (the join's)
        self.metrics = metrics
        self.store = store
        self.outbox = outbox
        self.registry = registry
        s = settings
        topics = s.kafka.topics
        self.join_topic = f"{s.faust_app_id}-join"
        self.topics = topics
        self.prefix = s.redis_key_prefix
        self.stats: StatsAggregator | None = None
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
        self.accuracy: AccuracyBook | None = None
        if tables.accuracy is not None:
            self.accuracy = AccuracyBook(
                tables.accuracy,
                s.accuracy_bucket_s * 1000,
                max(s.accuracy_horizon_s, s.accuracy_bucket_s) * 1000,
                s.accuracy_min_labels,
                calibration=self._calibration,
                metrics=metrics,
            )
        self._calibrations: dict[Version, float | None] = {}
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
                on_pair=self._on_pair,
                on_scored=self._on_scored,
                on_outcome=self._on_outcome,
            )
        self._extra: dict[str, HashWrite] = {}  # drift hashes waiting for the next flush
        self._retry_at = 0.0
        self._backoff = 0.0
        self.flushes = 0

    # ---- statistics (inference.results) -------------------------------------------------

    async def on_results(self, records: Sequence[RawRecord], *, forward: bool) -> None:
        """Decode a batch of results; fold them into the windows and forward them to the join."""
        m = self.metrics
        results: list[InferenceResult] = []
        positions: list[tuple[int, int]] = []
        for rec in records:
            try:
                r = codec.decode(InferenceResult, rec.value, rec.content_type)
            except dl.CodecError as exc:
                m.events.labels("undecodable").inc()
                if self.stats is not None:  # one dead letter per bad record: the stats role's
                    await self._dead_letter(rec, exc, self.topics.dlq(INFERENCE_RESULTS))
                continue
            results.append(r)
            positions.append((rec.partition, rec.offset))
            if forward:
                await self._forward(r.asset_id, j.result_note(r), j.KIND_RESULT)
        if records:
            m.consumed.labels(records[0].topic).inc(len(records))
        if self.stats is not None and results:
            report = self.stats.add(results, positions)
            m.events.labels("accepted").inc(report.accepted)
            if report.late:
                m.events.labels("late").inc(report.late)
            if report.replayed:
                m.events.labels("replayed").inc(report.replayed)

    # ---- the join: forwarders ------------------------------------------------------------

    async def on_inputs(self, records: Sequence[RawRecord]) -> None:
        """Forward where each input lies (not the input) to the join, keyed by asset id."""
        for rec in records:
            input_type = "CameraImage" if rec.topic == self.topics.camera_images else "SensorWindow"
            try:
                stored = j.stored_input(input_type, rec.value, rec.content_type)
            except dl.CodecError:
                # The inference consumer dead-letters bad inputs; the join just skips them.
                self.metrics.events.labels("input_skipped").inc()
                continue
            note = j.input_note(stored, rec.topic, rec.partition, rec.offset)
            await self._forward(stored.asset_id, note, j.KIND_INPUT)
        if records:
            self.metrics.consumed.labels(records[0].topic).inc(len(records))

    async def on_labels(self, records: Sequence[RawRecord]) -> None:
        """Forward labels to the join by asset id, with their source position.

        Undecodable labels, and labels that cannot be routed (no asset id) or are not well
        formed (an inspection without lookback), are dead-lettered here.
        """
        for rec in records:
            try:
                label = codec.decode(Label, rec.value, rec.content_type)
                problem = label_problem(label)
                if problem is not None:
                    raise dl.CodecError(dl.SCHEMA_INVALID, problem)
            except dl.CodecError as exc:
                await self._dead_letter(rec, exc, self.topics.dlq(FEEDBACK_LABELS))
                continue
            assert rec.value is not None
            assert label.asset_id is not None
            hdrs: h.HeaderList = [
                (k, v) for k, v in rec.headers if not k.startswith("driftline-join-")
            ]
            hdrs += [
                (j.JOIN_KIND, j.KIND_LABEL.encode()),
                (j.JOIN_SOURCE, j.source_header(rec.topic, rec.partition, rec.offset)),
            ]
            await self.outbox.send(self.join_topic, label.asset_id.encode(), rec.value, hdrs)
        if records:
            self.metrics.consumed.labels(records[0].topic).inc(len(records))

    async def _forward(self, asset_id: str, payload: bytes, kind: str) -> None:
        await self.outbox.send(
            self.join_topic, asset_id.encode(), payload, [(j.JOIN_KIND, kind.encode())]
        )

    # ---- the join itself -----------------------------------------------------------------

    async def on_join(self, records: Sequence[RawRecord]) -> None:
        """Join a batch; the inputs of every label it settles are read back in one go."""
        join = self.join
        assert join is not None
        outcomes: list[j.LabelOutcome] = []
        for rec in records:
            kind = rec.header(j.JOIN_KIND)
            if rec.value is None:
                continue
            if kind == j.KIND_INPUT.encode():
                outcomes += join.on_input(rec.value)
            elif kind == j.KIND_RESULT.encode():
                outcomes += join.on_result(rec.value)
            elif kind == j.KIND_LABEL.encode():
                record = j.LabelRecord(
                    key=rec.key,
                    label=codec.decode(Label, rec.value, rec.content_type),  # checked upstream
                    value=rec.value,
                    headers=[(k, v) for k, v in rec.headers if not k.startswith("driftline-join-")],
                    source=j.parse_source(rec.header(j.JOIN_SOURCE)),
                )
                outcomes.append(join.on_label(record))
        await self._settle(outcomes)
        if records:
            self.metrics.consumed.labels(records[0].topic).inc(len(records))

    async def _settle(self, outcomes: Sequence[j.LabelOutcome], *, now: bool = False) -> None:
        """Act on labels' outcomes: emit their windows, dead-letter them, or count them.

        The inputs of every window are read back from Kafka in one batch. A window is sent and
        acknowledged before its event is marked labelled (see JoinProcessor.confirm). `now`:
        settled by a timer (no consumed record to attach a dead letter to), so dead letters
        are sent at once and awaited.
        """
        join = self.join
        assert join is not None
        emits = [e for o in outcomes if o.decision is Decision.EMIT for e in o.emits]
        fetched = {}
        if emits:
            assert self.reader is not None, "the join needs an InputReader"
            refs = [e.state.ref.position for e in emits if e.state.ref is not None]
            fetched = await self.reader.read(refs)
        for outcome in outcomes:
            self.metrics.labels.labels(outcome.decision.value).inc()
            if outcome.decision is Decision.EMIT:
                ready: list[tuple[j.Emit, LabelledWindow]] = []
                lost: list[str] = []
                for emit in outcome.emits:
                    window = self._window(emit, fetched, outcome.record.label)
                    if window is None:
                        join.release(emit)
                        lost.append(emit.state.event_id)
                    else:
                        ready.append((emit, window))
                await asyncio.gather(*(self._emit_window(w) for _, w in ready))
                for emit, window in ready:
                    join.confirm(emit, window, outcome.record.label)
                if lost:
                    message = (
                        f"missing_input: the input of event(s) {', '.join(lost[:5])}"
                        f"{' ...' if len(lost) > 5 else ''} is no longer readable from Kafka"
                    )
                    await self._dead_letter_label(outcome, now, message)
            elif outcome.decision in (Decision.UNKNOWN, Decision.EXPIRED):
                await self._dead_letter_label(outcome, now)

    def _window(
        self, emit: j.Emit, fetched: Mapping[tuple[str, int, int], FetchedRecord], label: Label
    ) -> LabelledWindow | None:
        """The labelled window of an event, from its input as read back (None if it is gone)."""
        ref = emit.state.ref
        got = fetched.get(ref.position) if ref is not None else None
        if ref is None or got is None:
            return None
        try:
            stored = j.stored_input(ref.input_type, got.value, got.content_type)
        except dl.CodecError:
            return None
        if stored.event_id != emit.state.event_id:
            return None  # not the record we noted (a topic recreated since): never mislabel
        return labelled_window(emit.state, stored.data, label)

    async def _dead_letter_label(
        self, outcome: j.LabelOutcome, now: bool, message: str | None = None
    ) -> None:
        letter, hdrs = j.dead_letter_for(outcome, self.settings.service_name, message)
        record = outcome.record
        topic = self.topics.dlq(FEEDBACK_LABELS)
        await self.outbox.send(topic, record.key, record.value, hdrs, wait=now)
        self.metrics.dead_letters.labels(letter.source_topic, letter.error_class).inc()
        log.info("label dead-lettered: %s", letter.error_message)

    async def _emit_window(self, window: LabelledWindow) -> None:
        topic = self.topics.training_windows
        value = codec.encode(window)
        await self.outbox.send(topic, window.asset_id.encode(), value, AVRO_HEADERS, wait=True)
        self.metrics.produced.labels(topic).inc()

    def _on_pair(self, prediction: Prediction, stored: StoredInput) -> None:
        self.drift.add_pair(prediction, stored)

    # ---- live accuracy by event time (AccuracyBook.scored / .labelled) -------------------
    # The join calls these: once per event at its first prediction, once per window emitted
    # with a prediction; `partition` is the event's join-topic partition (its asset's).

    def _on_scored(self, prediction: Prediction, event_time_ms: int, partition: int) -> None:
        if self.accuracy is None:
            return
        self.accuracy.scored(
            (prediction.model_name, prediction.model_version),
            event_time_ms,
            prediction.confidence,
            partition,
        )

    def _on_outcome(self, prediction: Prediction, window: LabelledWindow, partition: int) -> None:
        """A label joined to a prediction: count it in the bucket of its event's time."""
        if self.accuracy is None:
            return
        self.accuracy.labelled(
            (prediction.model_name, prediction.model_version),
            window.event_time_ms,
            window.label_time_ms,
            prediction.predicted_class == window.true_class,
            partition,
        )

    def _partition(self, key: bytes) -> int:
        return join_partition(key, self.settings.join_partitions)

    def on_labelled_windows(self, records: Sequence[RawRecord]) -> None:
        """Fold labelled windows into live accuracy (what `rebuild` replays).

        training.windows holds labelled events only: the scored counts (coverage, confidence
        estimate) come from inference.results through `on_scored_results`; without them
        (labelled windows alone) coverage and estimate stay empty.
        """
        assert self.accuracy is not None
        for rec in records:
            try:
                lw = codec.decode(LabelledWindow, rec.value, rec.content_type)
            except dl.CodecError:
                continue
            if lw.model_name is None or lw.model_version is None or lw.predicted_class is None:
                continue
            self.accuracy.labelled(
                (lw.model_name, lw.model_version),
                lw.event_time_ms,
                lw.label_time_ms,
                lw.predicted_class == lw.true_class,
                self._partition(lw.asset_id.encode()),  # the join partitions by asset
            )

    def on_scored_results(self, records: Sequence[RawRecord]) -> None:
        """Count results as scored events, for a rebuild (no join there to say which result
        was an event's first): each record counts once, so duplicated results count twice."""
        assert self.accuracy is not None
        for rec in records:
            try:
                r = codec.decode(InferenceResult, rec.value, rec.content_type)
            except dl.CodecError:
                continue
            self.accuracy.scored(
                (r.model_name, r.model_version),
                r.event_time_ms,
                r.confidence,
                self._partition(r.asset_id.encode()),  # as the join: by asset
            )

    def _export_accuracy(self, version: Version) -> None:
        """This worker's gauges: the newest event-time bucket with enough labels, the estimate."""
        assert self.accuracy is not None
        snap = self.accuracy.snapshot(version)
        if snap is None:
            est = self.accuracy.estimate(version)
            if est is not None:
                self._export_estimate(version, *est)
            return
        m = self.metrics
        labels = (version[0], str(version[1]))
        m.live_accuracy.labels(*labels).set(snap.accuracy)
        m.live_accuracy_labels.labels(*labels).set(snap.total)
        if snap.coverage is not None:
            m.live_accuracy_coverage.labels(*labels).set(snap.coverage)
        m.live_accuracy_label_delay.labels(*labels).set(snap.delay_mean_ms / 1000)
        m.live_accuracy_bucket_start.labels(*labels, "labels").set(snap.start_ms / 1000)
        if snap.estimate is not None and snap.estimate_start_ms is not None:
            self._export_estimate(version, snap.estimate, snap.estimate_start_ms)

    def _export_estimate(self, version: Version, estimate: float, start_ms: int) -> None:
        labels = (version[0], str(version[1]))
        self.metrics.live_accuracy_estimate.labels(*labels).set(estimate)
        self.metrics.live_accuracy_bucket_start.labels(*labels, "estimate").set(start_ms / 1000)

    def _calibration(self, version: Version) -> float | None:
        """The version's confidence calibration (holdout accuracy over holdout confidence)."""
        if version in self._calibrations:
            return self._calibrations[version]
        mv = self.registry().get(version) if self.registry is not None else None
        if mv is None:
            return None  # not known yet: ask again later
        hist = next(
            (
                f
                for f in (mv.reference.features if mv.reference else [])
                if f.name == CONFIDENCE_FEATURE
            ),
            None,
        )
        factor = (
            calibration_factor(mv.metrics.get("holdout_accuracy"), hist.edges, hist.fractions)
            if hist is not None
            else None
        )
        self._calibrations[version] = factor
        return factor

    # ---- recovery and housekeeping -------------------------------------------------------

    def on_stats_recovered(self) -> None:
        if self.stats is not None:
            n = self.stats.restore(self.stats.table.items())
            log.info("recovered %d window buckets from the changelog", n)

    def on_join_recovered(self) -> None:
        if self.join is not None:
            self.join.restore()
        if self.accuracy is not None:
            self.accuracy.restore()
            for version in self.accuracy.take_touched():
                self._export_accuracy(version)

    async def evict(self) -> None:
        """Housekeeping: settle labels whose wait is over, forget what is past retention."""
        if self.stats is not None:
            self.stats.evict()
        if self.join is not None:
            await self._settle(self.join.due(), now=True)
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
            await self.outbox.send(topic, s.model_name.encode(), value, AVRO_HEADERS, wait=True)
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
        if self.accuracy is not None:  # gauges from memory, whether or not Redis is up
            for version in self.accuracy.take_touched():
                self._export_accuracy(version)
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
