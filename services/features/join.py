"""The label join over the join topic: inputs, predictions and labels re-keyed by asset id.

Inputs (sensor.windows, camera.images) and results (inference.results) are keyed by asset, and
labels (per-event labels and asset inspections alike) carry the asset, so the app forwards all
three to one internal topic keyed by asset id (`<app id>-join`). The join tables' changelog
partitions are computed from the asset too (`join_partition`), so with any number of workers
everything about one asset meets in one worker, which restores exactly its partitions' state.

What the join keeps per event is small (core.EventState: ids, time, input position, prediction,
label): an input is forwarded as a reference to its record, and read back from Kafka by offset
when a label asks for it (pipeline + readback). Sensor inputs also carry their bytes on the join
topic, for drift, but are held only until their prediction comes. Table keys are
`asset \\x1f event id` (and `asset \\x1f\\x1e <label position>` for a waiting inspection).

All of it lives in the join's tables, which are on disk with the RocksDB store: the states, the
waiting labels, and an index table ordering them by time (an asset's events by event time for
inspections, all events by event time for eviction, waiting labels by label time). The join
reads them by key and by key range, so its memory does not grow with the events it holds.

Entries are evicted by event time, a retention plus a grace period after the newest event seen;
a label later than the retention is dead-lettered as expired.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from driftline.schemas import avro, codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.messages import (
    MODALITY_IMAGE,
    MODALITY_SENSOR,
    CameraImage,
    DeadLetter,
    InferenceResult,
    Label,
    LabelledWindow,
    SensorWindow,
)
from driftline.services.core import join as core
from driftline.services.features.tables import StateTable, key_partition

JOIN_KIND = "driftline-join-kind"
JOIN_EVENT_TIME = "driftline-join-event-time-ms"
JOIN_SOURCE = "driftline-join-source"
KIND_INPUT = "input"
KIND_RESULT = "result"
KIND_LABEL = "label"

SEP = b"\x1f"
INSPECTION_MARK = "\x1e"

# Key spaces of the index table (values are MARK): every key starts with its space's byte.
INDEX_BY_ASSET = b"a"
INDEX_BY_TIME = b"t"
INDEX_DUE = b"l"
MARK = b"\x01"
MAX_UNPAIRED = 10_000  # sensor inputs held for their prediction (for drift), at most
DUE_BATCH = 10_000  # waiting labels decided per housekeeping pass, at most
EVICT_BATCH = 100_000  # events evicted per housekeeping pass, at most

INPUT_TYPES: dict[str, tuple[type[SensorWindow] | type[CameraImage], str]] = {
    "SensorWindow": (SensorWindow, MODALITY_SENSOR),
    "CameraImage": (CameraImage, MODALITY_IMAGE),
}


class ResultNote(msgspec.Struct, frozen=True, array_like=True):
    """What the join needs of an InferenceResult."""

    event_id: str
    asset_id: str
    event_time_ms: int
    prediction: core.Prediction


class InputNote(msgspec.Struct, frozen=True, array_like=True):
    """What the join topic carries of an input: where it lies, and a sensor's bytes for drift."""

    event_id: str
    asset_id: str
    event_time_ms: int
    ref: core.InputRef
    data: bytes = b""  # SensorWindow Avro bytes; empty for photos (drift uses confidence only)


_ENC = msgspec.msgpack.Encoder()
_DEC_NOTE = msgspec.msgpack.Decoder(ResultNote)
_DEC_INPUT = msgspec.msgpack.Decoder(InputNote)


def join_partition(asset_id: str, partitions: int) -> int:
    """The join-topic partition of an asset (Kafka's default key hash of the asset id)."""
    return key_partition(asset_id.encode(), partitions)


def event_key(asset_id: str, event_id: str) -> bytes:
    return f"{asset_id}\x1f{event_id}".encode()


def inspection_key(asset_id: str, source: tuple[str, int, int]) -> bytes:
    topic, partition, offset = source
    return f"{asset_id}\x1f{INSPECTION_MARK}{topic}\x1f{partition}\x1f{offset}".encode()


def stored_input(
    input_type: str, value: bytes | None, content_type: str | None
) -> core.StoredInput:
    """An input record as the join sees it: validated, as Avro binary without framing.

    JSON inputs are re-encoded to Avro (LabelledWindow.input is Avro); Avro bytes are kept as
    they came, less any Confluent framing. Raises CodecError for records that do not decode.
    """
    kind, modality = INPUT_TYPES[input_type]
    msg = codec.decode(kind, value, content_type)
    assert value is not None
    if content_type == h.CONTENT_TYPE_JSON:
        data = codec.encode(msg)
    else:
        _schema_id, body = avro.strip_framing(value)
        data = bytes(body)
    return core.StoredInput(
        event_id=msg.event_id,
        asset_id=msg.asset_id,
        modality=modality,
        event_time_ms=msg.event_time_ms,
        input_type=input_type,
        data=data,
    )


def input_note(stored: core.StoredInput, topic: str, partition: int, offset: int) -> bytes:
    """The join topic's record of an input: its position, and its bytes only for sensors."""
    ref = core.InputRef(topic, partition, offset, stored.input_type, stored.modality)
    data = stored.data if stored.input_type == "SensorWindow" else b""
    return _ENC.encode(InputNote(stored.event_id, stored.asset_id, stored.event_time_ms, ref, data))


def result_note(result: InferenceResult) -> bytes:
    prediction = core.Prediction(
        model_name=result.model_name,
        model_version=result.model_version,
        predicted_class=result.predicted_class,
        confidence=result.confidence,
        scored_time_ms=result.scored_time_ms,
    )
    return _ENC.encode(
        ResultNote(result.event_id, result.asset_id, result.event_time_ms, prediction)
    )


def source_header(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}\x1f{partition}\x1f{offset}".encode()


def parse_source(value: bytes | str | None) -> tuple[str, int, int]:
    if value is None:
        return ("", -1, -1)
    text = value.decode() if isinstance(value, bytes) else value
    topic, partition, offset = text.split("\x1f")
    return topic, int(partition), int(offset)


@dataclass(frozen=True)
class LabelRecord:
    """A label as consumed: decoded, plus its original bytes, headers and position."""

    key: bytes | None
    label: Label
    value: bytes
    headers: h.HeaderList
    source: tuple[str, int, int]

    def parked(self) -> core.ParkedLabel:
        headers = [
            (k, v.encode() if isinstance(v, str) else v) for k, v in self.headers if v is not None
        ]
        topic, partition, offset = self.source
        return core.ParkedLabel(
            self.label.label_time_ms, self.value, headers, topic, partition, offset
        )

    @classmethod
    def unparked(cls, parked: core.ParkedLabel) -> LabelRecord:
        headers: h.HeaderList = list(parked.headers)
        label = codec.decode(Label, parked.value, codec.content_type_of(headers))
        source = (parked.topic, parked.partition, parked.offset)
        key = label.asset_id.encode() if label.asset_id is not None else None
        return cls(key, label, parked.value, headers, source)


@dataclass(frozen=True)
class Emit:
    """One event a label labels: its state (with the input's position) and partition."""

    key: bytes
    state: core.EventState
    partition: int


@dataclass(frozen=True)
class LabelOutcome:
    decision: core.Decision
    record: LabelRecord
    emits: tuple[Emit, ...] = ()


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
        note = _DEC_INPUT.decode(payload)
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
        note = _DEC_NOTE.decode(payload)
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
        parked = core.decode_parked(raw_parked)
        outcome = self._decide(LabelRecord.unparked(parked), key, wait=True, parked=True)
        if outcome.decision is core.Decision.WAIT:
            return []
        self._unpark(key, parked.label_time_ms)
        return [outcome]

    def _unpark(self, key: bytes, label_time_ms: int) -> None:
        partition = self.partition(_asset_of(key))
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
        for ikey, _ in self.index.scan(prefix + _time(start), prefix + _time(end + 1)):
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
        stop = INDEX_DUE + _time(self.watermark_ms - self.label_wait_ms)
        for ikey, _ in self.index.scan(INDEX_DUE, stop):
            if len(out) >= limit:
                break
            key = ikey[len(INDEX_DUE) + 8 :]
            raw = self.parked.get(key)
            self._unpark(key, _untime(ikey[len(INDEX_DUE) :][:8]))
            if raw is None:
                continue
            record = LabelRecord.unparked(core.decode_parked(raw))
            out.append(self._decide(record, key, wait=False))
        return out

    def restore(self) -> None:
        """Pick up recovered tables: the watermark is the newest event time indexed.

        Tables recovered from a version without the index (states but no index entries) are
        indexed here, once.
        """
        self._claimed.clear()
        self._evicted_to = None
        if _first(self.index, INDEX_BY_TIME) is None and next(self.states.items(), None):
            for key, value in self.states.items():
                if SEP not in key:
                    continue  # a key of the event-id-keyed join before 0.x: not ours to read
                state = core.decode_state(value)
                self._index_event(self.partition(state.asset_id), key, state.event_time_ms)
        if _first(self.index, INDEX_DUE) is None and next(self.parked.items(), None):
            for key, value in self.parked.items():
                label_time_ms = core.decode_parked(value).label_time_ms
                self.index.put(self.partition(_asset_of(key)), due_key(label_time_ms, key), MARK)
        newest = _first(self.index, INDEX_BY_TIME, reverse=True)
        if newest is not None:
            t = _untime(newest[len(INDEX_BY_TIME) :][:8])
            self.watermark_ms = max(self.watermark_ms, t)

    def evict(self, limit: int = EVICT_BATCH) -> int:
        """Delete events older than the watermark minus retention and grace (at most `limit`
        of them; the rest next time)."""
        removed = 0
        before = self.watermark_ms - self.keep_ms
        start = INDEX_BY_TIME + (_time(self._evicted_to) if self._evicted_to is not None else b"")
        done_to = before
        for ikey, _ in self.index.scan(start, INDEX_BY_TIME + _time(before)):
            t = _untime(ikey[len(INDEX_BY_TIME) :][:8])
            if removed >= limit:
                done_to = t
                break
            key = ikey[len(INDEX_BY_TIME) + 8 :]
            partition = self.partition(_asset_of(key))
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


def _time(t: int) -> bytes:
    """An event time as 8 bytes that sort as the times do (negative ones too)."""
    return (t + (1 << 63)).to_bytes(8, "big")


def _untime(b: bytes) -> int:
    return int.from_bytes(b, "big") - (1 << 63)


def by_asset_key(key: bytes, event_time_ms: int) -> bytes:
    """`a asset \\x1f time event id`: an asset's events in event-time order (inspections)."""
    asset, event_id = key.split(SEP, 1)
    return INDEX_BY_ASSET + asset + SEP + _time(event_time_ms) + event_id


def by_time_key(key: bytes, event_time_ms: int) -> bytes:
    """`t time asset \\x1f event id`: every event in event-time order (eviction)."""
    return INDEX_BY_TIME + _time(event_time_ms) + key


def due_key(label_time_ms: int, key: bytes) -> bytes:
    """`l label time key`: waiting labels in the order their wait runs out."""
    return INDEX_DUE + _time(label_time_ms) + key


def _first(table: StateTable, space: bytes, *, reverse: bool = False) -> bytes | None:
    """The first (or last) key of an index key space."""
    stop = bytes([space[0] + 1])
    found = next(table.scan(space, stop, reverse=reverse), None)
    return found[0] if found is not None else None


def _asset_of(key: bytes) -> str:
    return key.split(SEP, 1)[0].decode()


def dead_letter_for(
    outcome: LabelOutcome, service: str, message: str | None = None
) -> tuple[DeadLetter, h.HeaderList]:
    """The DLQ envelope for a label that names an unknown or expired event (or lost input)."""
    record = outcome.record
    topic, partition, offset = record.source
    label = record.label
    if label.is_inspection:
        start, end = label.interval()
        what = f"asset {label.asset_id} from {start} to {end} ms"
        if outcome.decision is core.Decision.EXPIRED:
            text = f"expired: the events of {what} are older than the join retention"
        else:
            text = f"unknown: the join has no input of {what}"
    elif outcome.decision is core.Decision.EXPIRED:
        text = f"expired: event {label.event_id} is older than the join retention"
    else:
        text = f"unknown: the join has no input for event {label.event_id}"
    error_class = dl.UNKNOWN_EVENT if message is None else dl.MISSING_INPUT
    letter = dl.dead_letter(
        topic=topic,
        partition=partition,
        offset=offset,
        error=dl.CodecError(error_class, message or text),
        service=service,
        key=record.key,
        value=record.value,
    )
    return letter, dl.to_headers(letter, record.headers)
