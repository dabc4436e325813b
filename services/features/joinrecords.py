"""What the join reads and hands back: the join topic's records, labels and their outcomes.

Inputs (sensor.windows, camera.images) and results (inference.results) travel on the join topic
as small notes (an input as a reference to its record, plus a sensor's bytes for drift), labels
as they came with their source position in headers. The join decides each label (`LabelOutcome`:
the events it labels, as `Emit`s); the ones it cannot use become dead letters here.
"""

from __future__ import annotations

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
    Label,
    SensorWindow,
)
from driftline.schemas.result_batch import DecodedResults
from driftline.services.core import join as core

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


class InputNote(msgspec.Struct, frozen=True, array_like=True):
    """What the join topic carries of an input: where it lies, and a sensor's bytes for drift."""

    event_id: str
    asset_id: str
    event_time_ms: int
    ref: core.InputRef
    data: bytes = b""  # SensorWindow Avro bytes; empty for photos (drift uses confidence only)


_ENC = msgspec.msgpack.Encoder()
RESULT_NOTES = msgspec.msgpack.Decoder(ResultNote)
INPUT_NOTES = msgspec.msgpack.Decoder(InputNote)


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


def result_notes(batch: DecodedResults) -> list[bytes]:
    """What the join needs of each result of a decoded batch (a ResultNote), in order."""
    models, names = batch.models, batch.class_names
    return [
        _ENC.encode(
            ResultNote(
                event_id,
                asset_id,
                t_ms,
                core.Prediction(
                    model_name=models[m].model_name,
                    model_version=models[m].model_version,
                    predicted_class=names[p],
                    confidence=c,
                    scored_time_ms=s_ms,
                ),
            )
        )
        for event_id, asset_id, m, p, c, t_ms, s_ms in zip(
            batch.event_ids,
            batch.asset_ids,
            batch.model_index.tolist(),
            batch.predicted.tolist(),
            batch.confidence.tolist(),
            batch.event_time_ms.tolist(),
            batch.scored_time_ms.tolist(),
            strict=True,
        )
    ]


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
    # A waiting label's key and label time: it stops waiting once the outcome is acted on
    # (its windows delivered, its dead letter sent), so a crash before leaves it waiting.
    unpark: tuple[bytes, int] | None = None


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
