"""The label join over the join topic: inputs, predictions and labels re-keyed by asset id.

Inputs (sensor.windows, camera.images) and results (inference.results) are keyed by asset, and
labels (per-event labels and asset inspections alike) carry the asset, so the app forwards all
three to one internal topic keyed by asset id (`<app id>-join`). The join tables' changelog
partitions are computed from the asset too (`join_partition`), so with any number of workers
everything about one asset meets in one worker, which restores exactly its partitions' state.

What the join keeps per event is small (core.EventState: ids, time, input position, prediction,
label): an input is forwarded as a reference to its record, and read back from Kafka by offset
when a label asks for it (pipeline + readback). Sensor inputs also carry their bytes on the join
topic, for drift, but are held only until their prediction comes. What travels on the join
topic, and what the join hands back, is in joinrecords; how its tables are keyed, in joinkeys.

All of it lives in the join's tables, which are on disk with the RocksDB store: the states, the
waiting labels, and an index table ordering them by time (an asset's events by event time for
inspections, all events by event time for eviction, waiting labels by label time). The join
reads them by key and by key range, so its memory does not grow with the events it holds.

Entries are evicted by event time, a retention plus a grace period after the newest event seen;
a label later than the retention is dead-lettered as expired.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from driftline.schemas.messages import Label, LabelledWindow
from driftline.services.core import join as core
from driftline.services.features.joinkeys import (
    INDEX_BY_ASSET,
    INDEX_BY_TIME,
    INDEX_DUE,
    MARK,
    SEP,
    asset_of,
    by_asset_key,
    by_time_key,
    decode_time,
    due_key,
    encode_time,
    event_key,
    first_key,
    inspection_key,
    join_partition,
)
from driftline.services.features.joinrecords import (
    INPUT_NOTES,
    RESULT_NOTES,
    Emit,
    LabelOutcome,
    LabelRecord,
)
from driftline.services.features.tables import StateTable

MAX_UNPAIRED = 10_000  # sensor inputs held for their prediction (for drift), at most
DUE_BATCH = 10_000  # waiting labels decided per housekeeping pass, at most
EVICT_BATCH = 100_000  # events evicted per housekeeping pass, at most

PairSink = Callable[[core.Prediction, core.StoredInput], None]
# (prediction, event time, join partition): once per event, at its first prediction.
ScoredSink = Callable[[core.Prediction, int, int], None]
# (prediction served, the window emitted, join partition): once per window with a prediction.
OutcomeSink = Callable[[core.Prediction, LabelledWindow, int], None]


class JoinProcessor:
    """Holds per-event states and waiting labels by asset and event; decides each label.

    Everything it holds per event or per label is in its tables (on disk with the RocksDB
    store): `states` (event key -> EventState), `parked` (waiting labels) and `index`, whose
    key spaces order them by time (see `by_asset_key`, `by_time_key`, `due_key`). In memory
    there is only what is bounded by time or count: the emits of the batch being settled
    (`_claimed`) and sensor inputs whose prediction has not come yet (`_unpaired`, for drift,
    at most `max_unpaired` and `pair_keep_ms` of event time).
    """

    def __init__(
        self,
        states: StateTable,
        parked: StateTable,
        index: StateTable,
        *,
        partitions: int,
        retention_ms: int,
        grace_ms: int,
        label_wait_ms: int,
        on_pair: PairSink | None = None,
        on_scored: ScoredSink | None = None,
        on_outcome: OutcomeSink | None = None,
        max_unpaired: int = MAX_UNPAIRED,
    ) -> None:
        self.states = states
        self.parked = parked
        self.index = index
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.keep_ms = retention_ms + grace_ms
        self.label_wait_ms = label_wait_ms
        self.pair_keep_ms = max(label_wait_ms, 600_000)
        self.max_unpaired = max_unpaired
        self.on_pair = on_pair
        self.on_scored = on_scored
        self.on_outcome = on_outcome
        self.watermark_ms = 0
        self._evicted_to: int | None = None  # event time below which the index is evicted
        self._claimed: set[bytes] = set()  # decided EMIT, window not yet delivered
        self._unpaired: dict[bytes, core.StoredInput] = {}  # sensor inputs awaiting prediction

    def partition(self, asset_id: str) -> int:
        return join_partition(asset_id, self.partitions)

    def _state(self, key: bytes) -> core.EventState | None:
        raw = self.states.get(key)
        return core.decode_state(raw) if raw is not None else None

    def _put(self, key: bytes, state: core.EventState, before: core.EventState | None) -> None:
        partition = self.partition(state.asset_id)
        self.states.put(partition, key, core.encode(state))
        if before is None:
            self._index_event(partition, key, state.event_time_ms)

    def _index_event(self, partition: int, key: bytes, event_time_ms: int) -> None:
        self.index.put(partition, by_asset_key(key, event_time_ms), MARK)
        self.index.put(partition, by_time_key(key, event_time_ms), MARK)

    def _too_old(self, event_time_ms: int) -> bool:
        return core.evictable(event_time_ms, self.watermark_ms, self.keep_ms)

    def on_input(self, payload: bytes) -> list[LabelOutcome]:
        """Record where an input lies; completes a pair, settles a waiting label."""
        note = INPUT_NOTES.decode(payload)
        if self._too_old(note.event_time_ms):
            return []  # a replay of something already evicted: nothing to keep
        self.watermark_ms = max(self.watermark_ms, note.event_time_ms)
        key = event_key(note.asset_id, note.event_id)
        before = self._state(key)
        state = core.with_input(before, note.event_id, note.asset_id, note.event_time_ms, note.ref)
        if state is before:
            return []  # a replayed input: its position is known, its pair was made
        self._put(key, state, before)
        stored = core.StoredInput(
            note.event_id,
            note.asset_id,
            note.ref.modality,
            note.event_time_ms,
            note.ref.input_type,
            note.data,
        )
        if state.prediction is not None:
            if self.on_pair is not None:
                self.on_pair(state.prediction, stored)
        elif self.on_pair is not None:
            self._unpaired[key] = stored
            if len(self._unpaired) > self.max_unpaired:  # the oldest goes without a drift pair
                del self._unpaired[next(iter(self._unpaired))]
        return self._retry_parked(key)

    def on_result(self, payload: bytes) -> list[LabelOutcome]:
        """Record the prediction served (the first one wins); completes a pair with its input."""
        note = RESULT_NOTES.decode(payload)
        if self._too_old(note.event_time_ms):
            return []
        self.watermark_ms = max(self.watermark_ms, note.event_time_ms)
        key = event_key(note.asset_id, note.event_id)
        before = self._state(key)
        state = core.with_prediction(
            before, note.event_id, note.asset_id, note.event_time_ms, note.prediction
        )
        if state != before:
            self._put(key, state, before)
        if before is not None and before.prediction is not None:
            return []
        if self.on_scored is not None:
            self.on_scored(note.prediction, note.event_time_ms, self.partition(note.asset_id))
        stored = self._unpaired.pop(key, None)
        if stored is not None and self.on_pair is not None:
            self.on_pair(note.prediction, stored)
        return self._retry_parked(key)

    def _retry_parked(self, key: bytes) -> list[LabelOutcome]:
        """Decide a waiting label again now that its event has more; [] if it still waits."""
        raw_parked = self.parked.get(key)
        if raw_parked is None:
            return []
        if key in self._claimed:
            return []  # being settled already: it stops waiting once that is done
        parked = core.decode_parked(raw_parked)
        outcome = self._decide(LabelRecord.unparked(parked), key, wait=True, parked=True)
        if outcome.decision is core.Decision.WAIT:
            return []
        return [replace(outcome, unpark=(key, parked.label_time_ms))]

    def settled(self, outcome: LabelOutcome) -> None:
        """A label's outcome was acted on: if it was waiting, it waits no more."""
        if outcome.unpark is not None:
            self._unpark(*outcome.unpark)

    def _unpark(self, key: bytes, label_time_ms: int) -> None:
        partition = self.partition(asset_of(key))
        self.parked.delete(partition, key)
        self.index.delete(partition, due_key(label_time_ms, key))

    def on_label(self, record: LabelRecord) -> LabelOutcome:
        """Decide a label now, or park it until the inputs have caught up with it."""
        label = record.label
        assert label.asset_id is not None  # checked by the forwarder (core.label_problem)
        if label.is_inspection:
            key = inspection_key(label.asset_id, record.source)
        else:
            assert label.event_id is not None
            key = event_key(label.asset_id, label.event_id)
        if self.parked.get(key) is not None:
            return LabelOutcome(core.Decision.DUPLICATE, record)
        return self._decide(record, key, wait=True)

    def _decide(
        self, record: LabelRecord, key: bytes, *, wait: bool, parked: bool = False
    ) -> LabelOutcome:
        label = record.label
        watermark = self.watermark_ms if wait else None
        emits: tuple[Emit, ...] = ()
        if label.is_inspection:
            decision, emits = self._decide_inspection(label, watermark)
        elif key in self._claimed:
            decision = core.Decision.DUPLICATE
        else:
            state = self._state(key)
            decision = core.decide(
                state,
                label,
                self.retention_ms,
                watermark_ms=watermark,
                wait_ms=self.label_wait_ms,
            )
            if decision is core.Decision.EMIT:
                assert state is not None
                emits = (Emit(key, state, self.partition(state.asset_id)),)
        if decision is core.Decision.WAIT:
            if not parked:
                assert label.asset_id is not None
                partition = self.partition(label.asset_id)
                self.parked.put(partition, key, core.encode(record.parked()))
                self.index.put(partition, due_key(label.label_time_ms, key), MARK)
            return LabelOutcome(decision, record)
        for emit in emits:
            self._claimed.add(emit.key)
        return LabelOutcome(decision, record, emits)

    def _decide_inspection(
        self, label: Label, watermark: int | None
    ) -> tuple[core.Decision, tuple[Emit, ...]]:
        assert label.asset_id is not None
        start, end = label.interval()
        asset = label.asset_id.encode()
        prefix = INDEX_BY_ASSET + asset + SEP
        found: list[tuple[bytes, core.EventState]] = []
        for ikey, _ in self.index.scan(prefix + encode_time(start), prefix + encode_time(end + 1)):
            key = asset + SEP + ikey[len(prefix) + 8 :]
            state = self._state(key)
            if state is not None:
                found.append((key, state))
        decision, chosen = core.decide_inspection(
            [(s, s.labelled_class is not None or k in self._claimed) for k, s in found],
            label,
            self.retention_ms,
            watermark_ms=watermark,
            wait_ms=self.label_wait_ms,
        )
        partition = self.partition(label.asset_id)
        return decision, tuple(Emit(found[i][0], found[i][1], partition) for i in chosen)

    def confirm(self, emit: Emit, window: LabelledWindow, label: Label) -> None:
        """Mark an event labelled, once its window is delivered.

        Marking after delivery means a crash in between re-emits the window on replay (at
        least once) rather than losing it; a label seen after the mark is a duplicate.
        """
        self._claimed.discard(emit.key)
        before = self._state(emit.key)
        self._put(emit.key, core.marked(before or emit.state, label), before)
        p = (before or emit.state).prediction
        if p is not None and self.on_outcome is not None:
            self.on_outcome(p, window, emit.partition)

    def release(self, emit: Emit) -> None:
        """Give up an emit whose window could not be built (its input is gone)."""
        self._claimed.discard(emit.key)

    def due(self, limit: int = DUE_BATCH) -> list[LabelOutcome]:
        """Waiting labels the inputs have now passed (at most `limit`; the rest next time),
        decided with what the join holds."""
        out: list[LabelOutcome] = []
        stop = INDEX_DUE + encode_time(self.watermark_ms - self.label_wait_ms)
        for ikey, _ in self.index.scan(INDEX_DUE, stop):
            if len(out) >= limit:
                break
            key = ikey[len(INDEX_DUE) + 8 :]
            label_time_ms = decode_time(ikey[len(INDEX_DUE) :][:8])
            raw = self.parked.get(key)
            if raw is None:
                self._unpark(key, label_time_ms)
                continue
            if key in self._claimed:
                continue  # being settled already
            record = LabelRecord.unparked(core.decode_parked(raw))
            outcome = self._decide(record, key, wait=False)
            out.append(replace(outcome, unpark=(key, label_time_ms)))
        return out

    def retry_waiting(self) -> list[LabelOutcome]:
        """Every waiting label decided again with what the join holds now (after a recovery).

        A label waits for its event and is retried when the event gets its input or
        prediction. After a crash the event's state can come back complete while the label is
        still waiting (the tables' changelogs stop at different points), and a replayed input
        or result changes nothing, so nothing would retry it before its wait ran out.
        """
        keys = [key for key, _ in self.parked.items()]
        return [outcome for key in keys for outcome in self._retry_parked(key)]

    def restore(self) -> None:
        """Pick up recovered tables: index every event and waiting label held, and take the
        newest event time indexed as the watermark.

        The index is derived from the events and the waiting labels, and on disk it has no
        changelog: whatever this worker's databases still hold of it, the partitions just
        recovered are indexed again here (a put of an entry already there changes nothing;
        an entry whose event is gone is skipped by every reader).
        """
        self._claimed.clear()
        self._evicted_to = None
        for key, value in self.states.items():
            if SEP not in key:
                continue  # a key of the event-id-keyed join before 0.x: not ours to read
            state = core.decode_state(value)
            self._index_event(self.partition(state.asset_id), key, state.event_time_ms)
        for key, value in self.parked.items():
            label_time_ms = core.decode_parked(value).label_time_ms
            self.index.put(self.partition(asset_of(key)), due_key(label_time_ms, key), MARK)
        newest = first_key(self.index, INDEX_BY_TIME, reverse=True)
        if newest is not None:
            t = decode_time(newest[len(INDEX_BY_TIME) :][:8])
            self.watermark_ms = max(self.watermark_ms, t)

    def held_since(self) -> int:
        """The oldest event time from which every event is still held (older ones may be
        evicted): the newest event time seen less retention and grace."""
        return self.watermark_ms - self.keep_ms

    def events_since(self, event_time_ms: int) -> Iterator[core.EventState]:
        """The events held from this event time on, in event-time order (read from disk)."""
        start = INDEX_BY_TIME + encode_time(event_time_ms)
        for ikey, _ in self.index.scan(start, bytes([INDEX_BY_TIME[0] + 1])):
            state = self._state(ikey[len(INDEX_BY_TIME) + 8 :])
            if state is not None:
                yield state

    def evict(self, limit: int = EVICT_BATCH) -> int:
        """Delete events older than the watermark minus retention and grace (at most `limit`
        of them; the rest next time)."""
        removed = 0
        before = self.watermark_ms - self.keep_ms
        start = INDEX_BY_TIME + (
            encode_time(self._evicted_to) if self._evicted_to is not None else b""
        )
        done_to = before
        for ikey, _ in self.index.scan(start, INDEX_BY_TIME + encode_time(before)):
            t = decode_time(ikey[len(INDEX_BY_TIME) :][:8])
            if removed >= limit:
                done_to = t
                break
            key = ikey[len(INDEX_BY_TIME) + 8 :]
            partition = self.partition(asset_of(key))
            self.states.delete(partition, key)
            self.index.delete(partition, by_asset_key(key, t))
            self.index.delete(partition, ikey)
            self._unpaired.pop(key, None)
            removed += 1
        # Nothing older than `before` is indexed again: inputs and results that old are
        # dropped (_too_old), so the next scan starts here, past this one's tombstones.
        self._evicted_to = done_to
        pair_limit = self.watermark_ms - self.pair_keep_ms
        stale = [k for k, s in self._unpaired.items() if s.event_time_ms < pair_limit]
        for key in stale:
            del self._unpaired[key]
        return removed

    def __len__(self) -> int:
        return len(self.states)
