"""The label join: what is kept per event, and what a label for an event or an asset leads to.

Per event the join keeps a small record (EventState): the event's id, asset and time, where its
input lies in Kafka (InputRef: topic, partition, offset, record type), the prediction served and
whether it was labelled. The input itself is read back from Kafka when a label comes, so the
join holds no payloads (photos included).

Two kinds of label (schemas.messages.Label): a per-event label names one event; an asset
inspection labels every event of its asset in its event-time interval. Each event is labelled
once: **the first label joined to an event wins**, whichever its kind; a later per-event label
for it is a duplicate, and a later inspection skips it (labelling only the events of its
interval still open). A label either emits labelled windows, or is a duplicate (idempotent:
nothing is emitted twice), or finds no event (unknown) or only events older than the retention
(expired); the last two are dead-lettered with that reason.

A label can overtake its input or its prediction when the app works through a backlog (the
streams are consumed side by side), so a label waits until the inputs seen have caught up past
its label time (plus a margin for skew between partitions); only then is an event without
input unknown, and one without prediction emitted without it. An inspection always waits so,
since any event of its interval may still be on its way.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import msgspec

from driftline.schemas.messages import Label, LabelledWindow


class Decision(enum.StrEnum):
    EMIT = "emit"
    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    WAIT = "wait"


class StoredInput(msgspec.Struct, frozen=True, array_like=True):
    """An input as received: record type (SensorWindow or CameraImage) and its Avro bytes.

    Transient: built when an input is read (for drift, and when read back for a label), never
    kept in the join's state.
    """

    event_id: str
    asset_id: str
    modality: str
    event_time_ms: int
    input_type: str
    data: bytes


class InputRef(msgspec.Struct, frozen=True, array_like=True):
    """Where an event's input lies: its record in sensor.windows or camera.images."""

    topic: str
    partition: int
    offset: int
    input_type: str
    modality: str

    @property
    def position(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


class Prediction(msgspec.Struct, frozen=True, array_like=True):
    """What one model version served for an event."""

    model_name: str
    model_version: int
    predicted_class: str
    confidence: float
    scored_time_ms: int


class EventState(msgspec.Struct, frozen=True, array_like=True):
    """The small per-event record: input reference, prediction served, label once joined."""

    event_id: str
    asset_id: str
    event_time_ms: int
    prediction: Prediction | None = None
    labelled_class: str | None = None
    label_time_ms: int | None = None
    ref: InputRef | None = None
    # Whether the label was joined to a prediction, so live accuracy counted it (a window
    # emitted without one is not counted, even once a prediction comes); None in states
    # written before this field, which counted it when they hold a prediction.
    label_counted: bool | None = None

    @property
    def counts_label(self) -> bool:
        """Whether live accuracy counts this event's label (with its prediction)."""
        if self.labelled_class is None or self.prediction is None:
            return False
        return self.label_counted is not False


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


def with_input(
    state: EventState | None, event_id: str, asset_id: str, event_time_ms: int, ref: InputRef
) -> EventState:
    """The state with its input's position (the first one seen wins: a replay changes nothing)."""
    if state is None:
        return EventState(event_id, asset_id, event_time_ms, ref=ref)
    if state.ref is not None:
        return state
    return msgspec.structs.replace(state, ref=ref)


def label_problem(label: Label) -> str | None:
    """Why a label cannot be joined at all (a dead-letter reason), or None."""
    if label.asset_id is None or not label.asset_id:
        if label.is_inspection:
            return "an asset inspection needs asset_id"
        return "a per-event label needs asset_id: the join is partitioned by asset"
    if label.is_inspection and (label.lookback_ms is None or label.lookback_ms < 0):
        return "an asset inspection needs lookback_ms >= 0"
    return None


def _waiting(label: Label, watermark_ms: int | None, wait_ms: int) -> bool:
    return watermark_ms is not None and watermark_ms <= label.label_time_ms + wait_ms


def decide(
    state: EventState | None,
    label: Label,
    retention_ms: int,
    *,
    watermark_ms: int | None = None,
    wait_ms: int = 0,
) -> Decision:
    """What a per-event label leads to, from what the join holds for its event.

    A second label for an event is a duplicate whatever its class: the first label joined wins,
    so replays and re-sent labels never emit a second training window. A label whose input or
    prediction has not been seen WAITs while the inputs seen (`watermark_ms`, the newest event
    time) have not passed its label time plus `wait_ms`; after that an event without input is
    unknown and one without prediction is emitted without it. Give watermark None to decide now.
    """
    if state is not None and state.labelled_class is not None:
        return Decision.DUPLICATE
    waiting = _waiting(label, watermark_ms, wait_ms)
    if state is None or state.ref is None:
        return Decision.WAIT if waiting else Decision.UNKNOWN
    if label.label_time_ms - state.event_time_ms > retention_ms:
        return Decision.EXPIRED
    if waiting and state.prediction is None:
        return Decision.WAIT
    return Decision.EMIT


def decide_inspection(
    events: Sequence[tuple[EventState, bool]],
    label: Label,
    retention_ms: int,
    *,
    watermark_ms: int | None = None,
    wait_ms: int = 0,
) -> tuple[Decision, list[int]]:
    """What an asset inspection leads to, and which of `events` it labels (their indexes).

    `events` are the asset's events in the inspection's interval, each with whether it is
    labelled already (by its state or by a label being delivered). It labels those with an
    input, still open and within the retention; if none, it is a duplicate when some were
    labelled before, expired when all it found (or its whole interval) are past the retention,
    else unknown.
    """
    if _waiting(label, watermark_ms, wait_ms):
        return Decision.WAIT, []
    known = [
        (i, done)
        for i, (state, done) in enumerate(events)
        if state.ref is not None and label.label_time_ms - state.event_time_ms <= retention_ms
    ]
    chosen = [i for i, done in known if not done]
    if chosen:
        return Decision.EMIT, chosen
    if known:
        return Decision.DUPLICATE, []
    _start, end = label.interval()
    if (
        any(state.ref is not None for state, _ in events)
        or label.label_time_ms - end > retention_ms
    ):
        return Decision.EXPIRED, []
    return Decision.UNKNOWN, []


def labelled_window(state: EventState, data: bytes, label: Label) -> LabelledWindow:
    """The training window of an event: its input (Avro bytes), the label, the prediction."""
    assert state.ref is not None
    p = state.prediction
    return LabelledWindow(
        event_id=state.event_id,
        asset_id=state.asset_id,
        modality=state.ref.modality,
        event_time_ms=state.event_time_ms,
        label_time_ms=label.label_time_ms,
        true_class=label.true_class,
        input_type=state.ref.input_type,
        input=data,
        predicted_class=p.predicted_class if p else None,
        confidence=p.confidence if p else None,
        model_name=p.model_name if p else None,
        model_version=p.model_version if p else None,
    )


def marked(state: EventState, label: Label) -> EventState:
    """The per-event record marked labelled by this label (counted if it has a prediction)."""
    return msgspec.structs.replace(
        state,
        labelled_class=label.true_class,
        label_time_ms=label.label_time_ms,
        label_counted=state.prediction is not None,
    )


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
