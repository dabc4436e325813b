"""Live accuracy by event time in the features pipeline: what feeds the book, what it exports.

The join feeds it (once per event at its first prediction, once per event labelled with a
prediction; `partition` is the event's join-topic partition, its asset's), and after a recovery
the book is recounted from the join's event states; a rebuild feeds it from training.windows
and inference.results instead. This worker's gauges show the newest
event-time bucket with enough labels, and the confidence estimate, calibrated per version on
its holdout.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas.messages import InferenceResult, LabelledWindow, ModelVersion
from driftline.services.core.accuracy import EventTimeAccuracy, calibration_factor
from driftline.services.core.join import Prediction
from driftline.services.core.profile import CONFIDENCE_FEATURE
from driftline.services.features.accuracy import AccuracyBook, Owner, Version, join_partition
from driftline.services.features.join import JoinProcessor
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.records import RawRecord
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.tables import StateTable

log = logging.getLogger(__name__)

RECOUNT_CHUNK = 5000  # events recounted between two yields to the event loop
REPEAT_WINDOW = 100_000  # windows per partition a rebuild looks back for a repeated one


class RecentIds:
    """The last `size` ids seen, with a set for lookups."""

    def __init__(self, size: int) -> None:
        self.order: deque[str] = deque()
        self.ids: set[str] = set()
        self.size = size

    def seen(self, key: str) -> bool:
        """True if `key` is among the last ones; else remember it."""
        if key in self.ids:
            return True
        self.order.append(key)
        self.ids.add(key)
        if len(self.order) > self.size:
            self.ids.discard(self.order.popleft())
        return False


class LiveAccuracy:
    """The pipeline's AccuracyBook (`book`), fed by the join or a rebuild, and its gauges."""

    def __init__(
        self,
        settings: FeaturesSettings,
        metrics: FeaturesMetrics,
        table: StateTable,
        registry: Callable[[], Mapping[Version, ModelVersion]] | None,
    ) -> None:
        s = settings
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.book = AccuracyBook(
            table,
            s.accuracy_bucket_s * 1000,
            max(s.accuracy_horizon_s, s.accuracy_bucket_s) * 1000,
            s.accuracy_min_labels,
            calibration=self._calibration,
            metrics=metrics,
        )
        self._calibrations: dict[Version, float | None] = {}
        self._recent: dict[int, RecentIds] = {}  # a rebuild's last windows, per partition

    # ---- from the join (AccuracyBook.scored / .labelled) ---------------------------------

    def on_scored(self, prediction: Prediction, event_time_ms: int, partition: int) -> None:
        self.book.scored(
            (prediction.model_name, prediction.model_version),
            event_time_ms,
            prediction.confidence,
            partition,
        )

    def on_outcome(self, prediction: Prediction, window: LabelledWindow, partition: int) -> None:
        """A label joined to a prediction: count it in the bucket of its event's time."""
        self.book.labelled(
            (prediction.model_name, prediction.model_version),
            window.event_time_ms,
            window.label_time_ms,
            prediction.predicted_class == window.true_class,
            partition,
        )

    # ---- after a recovery -----------------------------------------------------------------

    async def recover(self, join: JoinProcessor, *, pause_every: int = RECOUNT_CHUNK) -> int:
        """Restore the book after the join's tables were recovered, recounting what the join
        still holds from its events' states; returns the events read.

        Why a recount: a bucket's counts and the event states that say what was counted are
        in different tables, each with its changelog, and after a crash (kill -9) they come
        back at different points: a changelog holds only what was acknowledged before, and a
        local database holds every write since, less the keys faust resets from the changelog
        on recovery. Replayed records then skip events whose state says "scored" or
        "labelled" though the bucket lost them, or count them twice the other way round. The
        states are the join's truth, and replay converges them (each change is idempotent),
        so the buckets are recounted from them and follow them from here on. Buckets older
        than the events the join still holds stay as the table has them (they are complete).
        """
        book = self.book
        book.restore()
        start = book.recount_start(join.watermark_ms, join.held_since())
        counted: dict[Owner, EventTimeAccuracy] = {}
        n = 0
        for state in join.events_since(start):
            n += 1
            if n % pause_every == 0:
                await asyncio.sleep(0)  # a long recount must not starve heartbeats
            p = state.prediction
            if p is None:
                continue
            owner = ((p.model_name, p.model_version), join.partition(state.asset_id))
            acc = counted.get(owner)
            if acc is None:
                acc = counted[owner] = EventTimeAccuracy(book.bucket_ms, book.horizon_ms)
            acc.scored(state.event_time_ms, p.confidence)
            if state.counts_label:
                assert state.label_time_ms is not None
                correct = p.predicted_class == state.labelled_class
                acc.labelled(state.event_time_ms, state.label_time_ms, correct)
        restored = [c for s in book.states.values() for b, c in s.buckets.items() if b >= start]
        recounted = [c for acc in counted.values() for c in acc.buckets.values()]
        book.replace_from(start, counted)
        scored = sum(c.scored for c in recounted) - sum(c.scored for c in restored)
        labelled = sum(c.labelled for c in recounted) - sum(c.labelled for c in restored)
        if scored or labelled:
            log.warning(
                "live accuracy recounted from the join's %d events: %+d scored, %+d labelled "
                "against its table (the two changelogs came back at different points)",
                n,
                scored,
                labelled,
            )
        return n

    # ---- from a rebuild ------------------------------------------------------------------

    def _partition(self, key: bytes) -> int:
        return join_partition(key, self.settings.join_partitions)

    def on_labelled_windows(self, records: Sequence[RawRecord]) -> None:
        """Fold labelled windows into live accuracy (what `rebuild` replays).

        training.windows holds labelled events only: the scored counts (coverage, confidence
        estimate) come from inference.results through `on_scored_results`; without them
        (labelled windows alone) coverage and estimate stay empty. An event's label counts
        once, as the join counts it: a window the join emitted again after a crash (at least
        once: JoinProcessor.confirm) is skipped; it follows the first closely in its partition,
        so the event ids of the last REPEAT_WINDOW windows per partition are enough to see it.
        """
        for rec in records:
            try:
                lw = codec.decode(LabelledWindow, rec.value, rec.content_type)
            except dl.CodecError:
                continue
            recent = self._recent.setdefault(rec.partition, RecentIds(REPEAT_WINDOW))
            if recent.seen(lw.event_id):
                continue
            if lw.model_name is None or lw.model_version is None or lw.predicted_class is None:
                continue
            self.book.labelled(
                (lw.model_name, lw.model_version),
                lw.event_time_ms,
                lw.label_time_ms,
                lw.predicted_class == lw.true_class,
                self._partition(lw.asset_id.encode()),  # the join partitions by asset
            )

    def on_scored_results(self, records: Sequence[RawRecord]) -> None:
        """Count results as scored events, for a rebuild (no join there to say which result
        was an event's first): each record counts once, so duplicated results count twice."""
        for rec in records:
            try:
                r = codec.decode(InferenceResult, rec.value, rec.content_type)
            except dl.CodecError:
                continue
            self.book.scored(
                (r.model_name, r.model_version),
                r.event_time_ms,
                r.confidence,
                self._partition(r.asset_id.encode()),  # as the join: by asset
            )

    # ---- gauges --------------------------------------------------------------------------

    def export_touched(self) -> None:
        """Export the gauges of every version whose buckets changed since the last call."""
        for version in self.book.take_touched():
            self._export(version)

    def _export(self, version: Version) -> None:
        """This worker's gauges: the newest event-time bucket with enough labels, the estimate."""
        snap = self.book.snapshot(version)
        if snap is None:
            est = self.book.estimate(version)
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
