"""The label join: what is kept per event, and what a label for that event leads to.

Per event id the join keeps the original input (bytes as received, with its record type) and,
separately, the prediction served for it plus whether it was already labelled. A label then
either emits a labelled window, or is a duplicate (idempotent: nothing is emitted twice), or
names an event that is unknown or older than the retention (dead-lettered, with that reason).

A label can overtake its input or its prediction when the app works through a backlog (the
streams are consumed side by side), so a label waits for both until the inputs seen have
caught up past its label time (plus a margin for skew between partitions); only then is an
event without input unknown, and one without prediction emitted without it.
"""

from __future__ import annotations

import enum

import msgspec

from schemas.messages import Label, LabelledWindow


class Decision(enum.StrEnum):
    EMIT = "emit"
    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    WAIT = "wait"


class StoredInput(msgspec.Struct, frozen=True, array_like=True):
    """An input as received: record type (SensorWindow or CameraImage) and its Avro bytes."""

    event_id: str
    asset_id: str
    modality: str
    event_time_ms: int
    input_type: str
    data: bytes


class Prediction(msgspec.Struct, frozen=True, array_like=True):
    """What one model version served for an event."""

    model_name: str
    model_version: int
    predicted_class: str
    confidence: float
    scored_time_ms: int


class EventState(msgspec.Struct, frozen=True, array_like=True):
    """The small per-event record: the prediction served and the label, once joined."""

    event_id: str
    asset_id: str
    event_time_ms: int
    prediction: Prediction | None = None
    labelled_class: str | None = None
    label_time_ms: int | None = None


def served_first(current: Prediction | None, new: Prediction) -> Prediction:
    """The prediction served "then": the earliest scored (a replayed result changes nothing)."""
    if current is None:
        return new
    if (new.scored_time_ms, new.model_version) < (current.scored_time_ms, current.model_version):
        return new
    return current


def with_prediction(
    state: EventState | None, event_id: str, asset_id: str, event_time_ms: int, p: Prediction
) -> EventState:
    if state is None:
        return EventState(event_id, asset_id, event_time_ms, prediction=p)
    return msgspec.structs.replace(state, prediction=served_first(state.prediction, p))


def decide(
    stored: StoredInput | None,
    state: EventState | None,
    label: Label,
    retention_ms: int,
    *,
    watermark_ms: int | None = None,
    wait_ms: int = 0,
) -> Decision:
    """What a label leads to, from what the join holds for its event.

    A second label for an event is a duplicate whatever its class: the first label joined wins,
    so replays and re-sent labels never emit a second training window. A label whose input or
    prediction has not been seen WAITs while the inputs seen (`watermark_ms`, the newest event
    time) have not passed its label time plus `wait_ms`; after that an event without input is
    unknown and one without prediction is emitted without it. Give watermark None to decide now.
    """
    if state is not None and state.labelled_class is not None:
        return Decision.DUPLICATE
    waiting = watermark_ms is not None and watermark_ms <= label.label_time_ms + wait_ms
    if stored is None:
        return Decision.WAIT if waiting else Decision.UNKNOWN
    if label.label_time_ms - stored.event_time_ms > retention_ms:
        return Decision.EXPIRED
    if waiting and (state is None or state.prediction is None):
        return Decision.WAIT
    return Decision.EMIT


def labelled(
    state: EventState | None, stored: StoredInput, label: Label
) -> tuple[EventState, LabelledWindow]:
    """The per-event record marked labelled, and the training window to emit."""
    p = state.prediction if state is not None else None
    window = LabelledWindow(
        event_id=stored.event_id,
        asset_id=stored.asset_id,
        modality=stored.modality,
        event_time_ms=stored.event_time_ms,
        label_time_ms=label.label_time_ms,
        true_class=label.true_class,
        input_type=stored.input_type,
        input=stored.data,
        predicted_class=p.predicted_class if p else None,
        confidence=p.confidence if p else None,
        model_name=p.model_name if p else None,
        model_version=p.model_version if p else None,
    )
    base = state or EventState(stored.event_id, stored.asset_id, stored.event_time_ms)
    marked = msgspec.structs.replace(
        base, labelled_class=label.true_class, label_time_ms=label.label_time_ms
    )
    return marked, window


class ParkedLabel(msgspec.Struct, frozen=True, array_like=True):
    """A label waiting for its input: the record as received, and where it came from."""

    label_time_ms: int
    value: bytes
    headers: list[tuple[str, bytes]]
    topic: str
    partition: int
    offset: int


def evictable(event_time_ms: int, watermark_ms: int, keep_ms: int) -> bool:
    """True once an entry is older than the newest event time seen minus what is kept."""
    return event_time_ms < watermark_ms - keep_ms


_ENC = msgspec.msgpack.Encoder(order="sorted")
_DEC_INPUT = msgspec.msgpack.Decoder(StoredInput)
_DEC_STATE = msgspec.msgpack.Decoder(EventState)
_DEC_PARKED = msgspec.msgpack.Decoder(ParkedLabel)


def encode(entry: StoredInput | EventState | ParkedLabel) -> bytes:
    return _ENC.encode(entry)


def decode_input(data: bytes) -> StoredInput:
    return _DEC_INPUT.decode(data)


def decode_state(data: bytes) -> EventState:
    return _DEC_STATE.decode(data)


def decode_parked(data: bytes) -> ParkedLabel:
    return _DEC_PARKED.decode(data)
