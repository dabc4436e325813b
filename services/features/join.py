"""The label join over the join topic: inputs, predictions and labels re-keyed by event id.

Inputs (sensor.windows, camera.images) and results (inference.results) are keyed by asset and
labels by event id, with different partition counts, so the app first forwards all three to
one internal topic keyed by event id (`<app id>-join`). Its partitions line up with the join
tables' changelogs (both partition by key hash), so with any number of workers the input, the
prediction and the label of one event meet in one worker. Entries are evicted by event time,
a retention plus a grace period after the newest event seen; a label that comes later than the
retention is dead-lettered as expired.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

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
from services.features.tables import StateTable

JOIN_KIND = "driftline-join-kind"
JOIN_EVENT_TIME = "driftline-join-event-time-ms"
JOIN_SOURCE = "driftline-join-source"
KIND_INPUT = "input"
KIND_RESULT = "result"
KIND_LABEL = "label"

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


_ENC = msgspec.msgpack.Encoder()
_DEC_NOTE = msgspec.msgpack.Decoder(ResultNote)


def stored_input(
    input_type: str, value: bytes | None, content_type: str | None
) -> core.StoredInput:
    """An input record as the join keeps it: validated, as Avro binary without framing.

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

    key: bytes
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
    def unparked(cls, key: bytes, parked: core.ParkedLabel) -> LabelRecord:
        headers: h.HeaderList = list(parked.headers)
        label = codec.decode(Label, parked.value, codec.content_type_of(headers))
        source = (parked.topic, parked.partition, parked.offset)
        return cls(key, label, parked.value, headers, source)


@dataclass(frozen=True)
class LabelOutcome:
    decision: core.Decision
    record: LabelRecord
    window: LabelledWindow | None = None
    prediction: core.Prediction | None = None
    marked: core.EventState | None = None


PairSink = Callable[[core.Prediction, core.StoredInput], None]
OutcomeSink = Callable[[core.Prediction, Label], None]


class JoinProcessor:
    """Holds inputs, per-event states and waiting labels by event id; decides each label."""

    def __init__(
        self,
        inputs: StateTable,
        states: StateTable,
        parked: StateTable,
        *,
        retention_ms: int,
        grace_ms: int,
        label_wait_ms: int,
        on_pair: PairSink | None = None,
        on_outcome: OutcomeSink | None = None,
    ) -> None:
        self.inputs = inputs
        self.states = states
        self.parked = parked
        self.retention_ms = retention_ms
        self.keep_ms = retention_ms + grace_ms
        self.label_wait_ms = label_wait_ms
        self.on_pair = on_pair
        self.on_outcome = on_outcome
        self.watermark_ms = 0
        self._input_times: list[tuple[int, bytes]] = []
        self._state_times: list[tuple[int, bytes]] = []
        self._parked_times: list[tuple[int, bytes]] = []

    def on_input(self, key: bytes, payload: bytes) -> list[LabelOutcome]:
        """Keep an input (an encoded StoredInput); completes a pair, settles a waiting label."""
        stored = core.decode_input(payload)
        self.inputs.put(None, key, payload)
        heapq.heappush(self._input_times, (stored.event_time_ms, key))
        self.watermark_ms = max(self.watermark_ms, stored.event_time_ms)
        raw_state = self.states.get(key)
        if raw_state is not None and self.on_pair is not None:
            state = core.decode_state(raw_state)
            if state.prediction is not None:
                self.on_pair(state.prediction, stored)
        return self._retry_parked(key)

    def _retry_parked(self, key: bytes) -> list[LabelOutcome]:
        """Decide a waiting label again now that its event has more; [] if it still waits."""
        raw_parked = self.parked.get(key)
        if raw_parked is None:
            return []
        record = LabelRecord.unparked(key, core.decode_parked(raw_parked))
        outcome = self._decide(record, wait=True, parked=True)
        if outcome.decision is core.Decision.WAIT:
            return []
        self.parked.delete(None, key)
        return [outcome]

    def on_result(self, key: bytes, payload: bytes) -> list[LabelOutcome]:
        """Record the prediction served (the first one wins); completes a pair with its input."""
        note = _DEC_NOTE.decode(payload)
        raw_state = self.states.get(key)
        before = core.decode_state(raw_state) if raw_state is not None else None
        state = core.with_prediction(
            before, note.event_id, note.asset_id, note.event_time_ms, note.prediction
        )
        if state != before:
            self.states.put(None, key, core.encode(state))
        if before is None:
            heapq.heappush(self._state_times, (note.event_time_ms, key))
        self.watermark_ms = max(self.watermark_ms, note.event_time_ms)
        first = before is None or before.prediction is None
        raw_input = self.inputs.get(key)
        if first and raw_input is not None and self.on_pair is not None:
            self.on_pair(note.prediction, core.decode_input(raw_input))
        return self._retry_parked(key) if first else []

    def on_label(self, record: LabelRecord) -> LabelOutcome:
        """Decide a label now, or park it until the inputs have caught up with it."""
        if self.parked.get(record.key) is not None:
            return LabelOutcome(core.Decision.DUPLICATE, record)
        return self._decide(record, wait=True)

    def _decide(self, record: LabelRecord, *, wait: bool, parked: bool = False) -> LabelOutcome:
        key, label = record.key, record.label
        raw_input = self.inputs.get(key)
        raw_state = self.states.get(key)
        stored = core.decode_input(raw_input) if raw_input is not None else None
        state = core.decode_state(raw_state) if raw_state is not None else None
        decision = core.decide(
            stored,
            state,
            label,
            self.retention_ms,
            watermark_ms=self.watermark_ms if wait else None,
            wait_ms=self.label_wait_ms,
        )
        if decision is core.Decision.WAIT:
            if not parked:
                self.parked.put(None, key, core.encode(record.parked()))
                heapq.heappush(self._parked_times, (label.label_time_ms, key))
            return LabelOutcome(decision, record)
        if decision is not core.Decision.EMIT:
            return LabelOutcome(decision, record)
        assert stored is not None
        marked, window = core.labelled(state, stored, label)
        return LabelOutcome(decision, record, window, marked.prediction, marked)

    def confirm(self, outcome: LabelOutcome) -> None:
        """Mark the event labelled, once its window is delivered.

        Marking after delivery means a crash in between re-emits the window on replay (at
        least once) rather than losing it; a label seen after the mark is a duplicate.
        """
        marked = outcome.marked
        assert marked is not None
        key = outcome.record.key
        is_new = self.states.get(key) is None
        self.states.put(None, key, core.encode(marked))
        if is_new:
            heapq.heappush(self._state_times, (marked.event_time_ms, key))
        if outcome.prediction is not None and self.on_outcome is not None:
            self.on_outcome(outcome.prediction, outcome.record.label)

    def due(self) -> list[LabelOutcome]:
        """Waiting labels the inputs have now passed: decided with what the join holds."""
        out: list[LabelOutcome] = []
        heap = self._parked_times
        while heap and heap[0][0] + self.label_wait_ms < self.watermark_ms:
            _, key = heapq.heappop(heap)
            raw = self.parked.get(key)
            if raw is None:
                continue
            self.parked.delete(None, key)
            out.append(self._decide(LabelRecord.unparked(key, core.decode_parked(raw)), wait=False))
        return out

    def restore(self) -> None:
        """Rebuild the time indexes from recovered tables (after each recovery)."""
        self._input_times = [
            (core.decode_input(v).event_time_ms, k) for k, v in self.inputs.items()
        ]
        self._state_times = [
            (core.decode_state(v).event_time_ms, k) for k, v in self.states.items()
        ]
        self._parked_times = [
            (core.decode_parked(v).label_time_ms, k) for k, v in self.parked.items()
        ]
        for heap in (self._input_times, self._state_times, self._parked_times):
            heapq.heapify(heap)
        for t, _ in self._input_times + self._state_times:
            self.watermark_ms = max(self.watermark_ms, t)

    def evict(self) -> int:
        """Delete entries older than the watermark minus retention and grace."""
        removed = 0
        for heap, table in ((self._input_times, self.inputs), (self._state_times, self.states)):
            while heap and core.evictable(heap[0][0], self.watermark_ms, self.keep_ms):
                _, key = heapq.heappop(heap)
                if table.get(key) is not None:
                    table.delete(None, key)
                    removed += 1
        return removed


def dead_letter_for(outcome: LabelOutcome, service: str) -> tuple[DeadLetter, h.HeaderList]:
    """The DLQ envelope for a label that names an unknown or expired event."""
    record = outcome.record
    topic, partition, offset = record.source
    event_id = record.label.event_id
    if outcome.decision is core.Decision.EXPIRED:
        message = f"expired: event {event_id} is older than the join retention"
    else:
        message = f"unknown: the join has no input for event {event_id}"
    letter = dl.dead_letter(
        topic=topic,
        partition=partition,
        offset=offset,
        error=dl.CodecError(dl.UNKNOWN_EVENT, message),
        service=service,
        key=record.key,
        value=record.value,
    )
    return letter, dl.to_headers(letter, record.headers)
