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

Entries are evicted by event time, a retention plus a grace period after the newest event seen;
a label later than the retention is dead-lettered as expired.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from schemas import avro, codec
from schemas import deadletter as dl
from schemas import headers as h
from schemas.messages import (
    MODALITY_IMAGE,
    MODALITY_SENSOR,
    CameraImage,
    DeadLetter,
    InferenceResult,
    Label,
    LabelledWindow,
    SensorWindow,
)
from services.core import join as core
from services.features.tables import StateTable, key_partition

JOIN_KIND = "driftline-join-kind"
JOIN_EVENT_TIME = "driftline-join-event-time-ms"
JOIN_SOURCE = "driftline-join-source"
KIND_INPUT = "input"
KIND_RESULT = "result"
KIND_LABEL = "label"

SEP = b"\x1f"
INSPECTION_MARK = "\x1e"

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


@dataclass
class _AssetEvents:
    """One asset's event keys in event-time order (for inspections and eviction)."""

    times: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)

    def add(self, t: int, key: bytes) -> None:
        if not self.times or t >= self.times[-1]:
            self.times.append(t)
            self.keys.append(key)
        else:
            i = bisect.bisect_right(self.times, t)
            self.times.insert(i, t)
            self.keys.insert(i, key)

    def between(self, start: int, end: int) -> list[bytes]:
        lo = bisect.bisect_left(self.times, start)
        hi = bisect.bisect_right(self.times, end)
        return self.keys[lo:hi]

    def drop_before(self, t: int) -> list[bytes]:
        n = bisect.bisect_left(self.times, t)
        gone = self.keys[:n]
        del self.times[:n]
        del self.keys[:n]
        return gone


class JoinProcessor:
    """Holds per-event states and waiting labels by asset and event; decides each label."""

    def __init__(
        self,
        states: StateTable,
        parked: StateTable,
        *,
        partitions: int,
        retention_ms: int,
        grace_ms: int,
        label_wait_ms: int,
        on_pair: PairSink | None = None,
        on_scored: ScoredSink | None = None,
        on_outcome: OutcomeSink | None = None,
    ) -> None:
        self.states = states
        self.parked = parked
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.keep_ms = retention_ms + grace_ms
        self.label_wait_ms = label_wait_ms
        self.pair_keep_ms = max(label_wait_ms, 600_000)
        self.on_pair = on_pair
        self.on_scored = on_scored
        self.on_outcome = on_outcome
        self.watermark_ms = 0
        self._assets: dict[str, _AssetEvents] = {}
        self._parked_times: list[tuple[int, bytes]] = []
        self._claimed: set[bytes] = set()  # decided EMIT, window not yet delivered
        self._unpaired: dict[bytes, core.StoredInput] = {}  # sensor inputs awaiting prediction

    def partition(self, asset_id: str) -> int:
        return join_partition(asset_id, self.partitions)

    def _state(self, key: bytes) -> core.EventState | None:
        raw = self.states.get(key)
        return core.decode_state(raw) if raw is not None else None

    def _put(self, key: bytes, state: core.EventState, before: core.EventState | None) -> None:
        self.states.put(self.partition(state.asset_id), key, core.encode(state))
        if before is None:
            events = self._assets.get(state.asset_id)
            if events is None:
                events = self._assets[state.asset_id] = _AssetEvents()
            events.add(state.event_time_ms, key)

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
        record = LabelRecord.unparked(core.decode_parked(raw_parked))
        outcome = self._decide(record, key, wait=True, parked=True)
        if outcome.decision is core.Decision.WAIT:
            return []
        self.parked.delete(self.partition(_asset_of(key)), key)
        return [outcome]

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
                self.parked.put(self.partition(label.asset_id), key, core.encode(record.parked()))
                heapq.heappush(self._parked_times, (label.label_time_ms, key))
            return LabelOutcome(decision, record)
        for emit in emits:
            self._claimed.add(emit.key)
        return LabelOutcome(decision, record, emits)

    def _decide_inspection(
        self, label: Label, watermark: int | None
    ) -> tuple[core.Decision, tuple[Emit, ...]]:
        assert label.asset_id is not None
        start, end = label.interval()
        events = self._assets.get(label.asset_id)
        keys = events.between(start, end) if events is not None else []
        found: list[tuple[bytes, core.EventState]] = []
        for key in keys:
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
        current = self._state(emit.key) or emit.state
        self._put(emit.key, core.marked(current, label), self._state(emit.key))
        p = current.prediction
        if p is not None and self.on_outcome is not None:
            self.on_outcome(p, window, emit.partition)

    def release(self, emit: Emit) -> None:
        """Give up an emit whose window could not be built (its input is gone)."""
        self._claimed.discard(emit.key)

    def due(self) -> list[LabelOutcome]:
        """Waiting labels the inputs have now passed: decided with what the join holds."""
        out: list[LabelOutcome] = []
        heap = self._parked_times
        while heap and heap[0][0] + self.label_wait_ms < self.watermark_ms:
            _, key = heapq.heappop(heap)
            raw = self.parked.get(key)
            if raw is None:
                continue
            self.parked.delete(self.partition(_asset_of(key)), key)
            record = LabelRecord.unparked(core.decode_parked(raw))
            out.append(self._decide(record, key, wait=False))
        return out

    def restore(self) -> None:
        """Rebuild the indexes from recovered tables (after each recovery)."""
        self._assets = {}
        self._claimed.clear()
        rows: dict[str, list[tuple[int, bytes]]] = {}
        for key, value in self.states.items():
            if SEP not in key:
                continue  # a key of the event-id-keyed join before 0.x: not ours to read
            state = core.decode_state(value)
            rows.setdefault(state.asset_id, []).append((state.event_time_ms, key))
            self.watermark_ms = max(self.watermark_ms, state.event_time_ms)
        for asset, items in rows.items():
            items.sort()
            self._assets[asset] = _AssetEvents([t for t, _ in items], [k for _, k in items])
        self._parked_times = [
            (core.decode_parked(v).label_time_ms, k) for k, v in self.parked.items()
        ]
        heapq.heapify(self._parked_times)

    def evict(self) -> int:
        """Delete entries older than the watermark minus retention and grace."""
        removed = 0
        limit = self.watermark_ms - self.keep_ms
        for asset in list(self._assets):
            events = self._assets[asset]
            for key in events.drop_before(limit):
                if self.states.get(key) is not None:
                    self.states.delete(self.partition(asset), key)
                    removed += 1
            if not events.times:
                del self._assets[asset]
        pair_limit = self.watermark_ms - self.pair_keep_ms
        stale = [k for k, s in self._unpaired.items() if s.event_time_ms < pair_limit]
        for key in stale:
            del self._unpaired[key]
        return removed

    def __len__(self) -> int:
        return len(self.states)


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
