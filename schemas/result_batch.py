"""Avro InferenceResult records for a whole batch, without a dict or a writer per event.

Encoding (ResultEncoder, the inference consumer's): every field a batch's results share
(schema version, modality, model name and version, class names, the time they were scored) is
encoded once per batch; numbers that differ per event (probabilities, confidence, event time)
are encoded for the whole batch with numpy; what is left per event is joining a dozen byte
strings. The bytes are exactly what fastavro writes for the same record
(tests/unit/test_result_batch.py holds the two side by side), so readers see no difference.

Decoding (ResultDecoder, the features worker's): a batch becomes columns (DecodedResults), and
a record whose model version's bytes were seen before is read by slicing, never as a dict.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from driftline.schemas import codec
from driftline.schemas.avrobytes import encode_long, encode_longs, encode_string, length_prefix
from driftline.schemas.deadletter import CodecError
from driftline.schemas.headers import CONTENT_TYPE_AVRO
from driftline.schemas.messages import InferenceResult


class ResultEncoder:
    """Encodes the results of one model version (one modality, one list of classes)."""

    def __init__(
        self, *, modality: str, model_name: str, model_version: int, classes: Sequence[str]
    ) -> None:
        self.classes = list(classes)
        self.width = 4 * len(self.classes)
        block = encode_long(len(self.classes)) + b"".join(encode_string(c) for c in self.classes)
        array = (block + b"\x00") if self.classes else b"\x00"
        # modality, model_name, model_version, classes, then the probabilities' length prefix
        self._middle = (
            encode_string(modality)
            + encode_string(model_name)
            + encode_long(model_version)
            + array
            + encode_long(self.width)
        )
        self._predicted = [encode_string(c) for c in self.classes]

    def encode(
        self,
        event_ids: Sequence[str],
        asset_ids: Sequence[str],
        event_time_ms: npt.NDArray[np.int64],
        probabilities: npt.NDArray[np.float32],
        predicted: npt.NDArray[np.int64],
        confidence: npt.NDArray[np.float32],
        scored_time_ms: int,
    ) -> list[bytes]:
        """One Avro InferenceResult per row, in order."""
        n = len(event_ids)
        if probabilities.shape != (n, len(self.classes)):
            raise ValueError(
                f"probabilities of shape {probabilities.shape} for {n} events and "
                f"{len(self.classes)} classes"
            )
        rows = np.ascontiguousarray(probabilities, dtype="<f4").tobytes()
        conf = np.ascontiguousarray(confidence, dtype="<f4").tobytes()
        times = encode_longs(event_time_ms)
        tail = encode_long(scored_time_ms)
        middle, names, width = self._middle, self._predicted, self.width
        index = predicted.tolist()
        out: list[bytes] = []
        append = out.append
        for i in range(n):
            e = event_ids[i].encode("utf-8")
            a = asset_ids[i].encode("utf-8")
            append(
                b"".join(
                    (
                        b"\x02",  # schema_version 1
                        length_prefix(len(e)),
                        e,
                        length_prefix(len(a)),
                        a,
                        middle,
                        rows[i * width : (i + 1) * width],
                        names[index[i]],
                        conf[4 * i : 4 * i + 4],
                        times[i],
                        tail,
                    )
                )
            )
        return out


@dataclass(frozen=True)
class ResultModel:
    """What the results of one model version share: modality, name, version, class names."""

    modality: str
    model_name: str
    model_version: int
    classes: tuple[str, ...]


@dataclass(frozen=True)
class DecodedResults:
    """The decodable InferenceResults of a batch, as columns (probabilities are not kept).

    Row i is the record at `positions[i]` of the batch; `models[model_index[i]]` is what its
    model version wrote in it, `class_names[predicted[i]]` its predicted class. `failures`
    holds (position, reason) for every record that did not decode.
    """

    positions: list[int]
    event_ids: list[str]
    asset_ids: list[str]
    models: list[ResultModel]
    model_index: npt.NDArray[np.intp]
    class_names: list[str]
    predicted: npt.NDArray[np.intp]
    confidence: npt.NDArray[np.float64]
    event_time_ms: npt.NDArray[np.int64]
    scored_time_ms: npt.NDArray[np.int64]
    failures: list[tuple[int, CodecError]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions)


def model_bytes(model: ResultModel, probability_bytes: int) -> bytes:
    """The Avro bytes of a result between its asset id and its probabilities: modality, model
    name, version, classes and the probabilities' length prefix (as fastavro writes them)."""
    classes = model.classes
    block = encode_long(len(classes)) + b"".join(encode_string(c) for c in classes)
    return (
        encode_string(model.modality)
        + encode_string(model.model_name)
        + encode_long(model.model_version)
        + ((block + b"\x00") if classes else b"\x00")
        + encode_long(probability_bytes)
    )


_AVRO = (None, CONTENT_TYPE_AVRO)
_F32 = struct.Struct("<f")
MAX_LAYOUTS = 64  # model layouts remembered (one per model version and probabilities' size)


class ResultDecoder:
    """Decodes batches of InferenceResult values, remembering the model versions it has seen.

    A record in the common layout (schema version 1, unframed, ids and predicted class under
    64 bytes, the bytes of a model version seen before) is read by slicing its bytes; any
    other record by codec.decode (fastavro), whose model version is then remembered. The fast
    path accepts only records fastavro accepts and reads the same fields from them
    (tests/unit/test_result_decode.py holds the two side by side).
    """

    def __init__(self) -> None:
        # (bytes from the modality to the probabilities' length prefix, model, probability
        # bytes); the most recently matched first.
        self._layouts: list[tuple[bytes, int, int]] = []
        self._models: dict[ResultModel, int] = {}
        self._model_list: list[ResultModel] = []
        self._class_of: dict[bytes, int] = {}
        self._class_list: list[str] = []

    def _model(self, model: ResultModel) -> int:
        index = self._models.get(model)
        if index is None:
            index = self._models[model] = len(self._model_list)
            self._model_list.append(model)
        return index

    def _class(self, name: str) -> int:
        raw = name.encode("utf-8")
        index = self._class_of.get(raw)
        if index is None:
            index = self._class_of[raw] = len(self._class_list)
            self._class_list.append(name)
        return index

    def _learn(self, result: InferenceResult) -> tuple[int, int]:
        model = ResultModel(
            result.modality, result.model_name, result.model_version, tuple(result.classes)
        )
        index = self._model(model)
        for name in model.classes:
            self._class(name)
        width = len(result.probabilities)
        layout = (model_bytes(model, width), index, width)
        if layout not in self._layouts and len(self._layouts) < MAX_LAYOUTS:
            self._layouts.append(layout)
        return index, self._class(result.predicted_class)

    def decode(
        self, values: Sequence[bytes | None], content_types: Sequence[str | None]
    ) -> DecodedResults:
        """Decode every value; those that do not decode become failures with their reason."""
        positions: list[int] = []
        event_ids: list[str] = []
        asset_ids: list[str] = []
        models: list[int] = []
        predicted: list[int] = []
        conf: list[float] = []
        times: list[int] = []
        scored: list[int] = []
        failures: list[tuple[int, CodecError]] = []
        layouts = self._layouts
        class_of = self._class_of
        for pos, (value, ctype) in enumerate(zip(values, content_types, strict=True)):
            if value and ctype in _AVRO and value[0] == 2:  # schema_version 1, unframed
                try:
                    row = _common_layout(value, layouts, class_of)
                except (IndexError, UnicodeDecodeError, struct.error):
                    row = None
                if row is not None:
                    positions.append(pos)
                    event_ids.append(row[0])
                    asset_ids.append(row[1])
                    models.append(row[2])
                    predicted.append(row[3])
                    conf.append(row[4])
                    times.append(row[5])
                    scored.append(row[6])
                    continue
            try:
                result = codec.decode(InferenceResult, value, ctype)
            except CodecError as exc:
                failures.append((pos, exc))
                continue
            model, cls = self._learn(result)
            positions.append(pos)
            event_ids.append(result.event_id)
            asset_ids.append(result.asset_id)
            models.append(model)
            predicted.append(cls)
            conf.append(result.confidence)
            times.append(result.event_time_ms)
            scored.append(result.scored_time_ms)
        return DecodedResults(
            positions=positions,
            event_ids=event_ids,
            asset_ids=asset_ids,
            models=list(self._model_list),
            model_index=np.asarray(models, dtype=np.intp),
            class_names=list(self._class_list),
            predicted=np.asarray(predicted, dtype=np.intp),
            confidence=np.asarray(conf, dtype=np.float64),
            event_time_ms=np.asarray(times, dtype=np.int64),
            scored_time_ms=np.asarray(scored, dtype=np.int64),
            failures=failures,
        )


def _common_layout(
    value: bytes, layouts: list[tuple[bytes, int, int]], class_of: dict[bytes, int]
) -> tuple[str, str, int, int, float, int, int] | None:
    """(event id, asset id, model, predicted class, confidence bytes, event time, scored time)
    of a result in the common layout, else None; IndexError, struct.error or UnicodeDecodeError
    when the bytes end early or a string is not UTF-8 (the general decoder then says why)."""
    n = value[1]
    if n & 0x81:  # a one-byte, non-negative length (under 64 bytes)
        return None
    i = 2 + (n >> 1)
    event_id = value[2:i].decode("utf-8")
    n = value[i]
    if n & 0x81:
        return None
    start, i = i + 1, i + 1 + (n >> 1)
    asset_id = value[start:i].decode("utf-8")
    for k in range(len(layouts)):
        if value.startswith(layouts[k][0], i):
            break
    else:
        return None
    layout = layouts[k]
    if k:  # the next record is most likely of the same model version: try it first
        layouts.insert(0, layouts.pop(k))
    middle, model, width = layout
    i += len(middle) + width
    n = value[i]
    if n & 0x81:
        return None
    start, i = i + 1, i + 1 + (n >> 1)
    cls = class_of.get(value[start:i])
    if cls is None:
        return None
    (confidence,) = _F32.unpack_from(value, i)
    i += 4
    longs = [0, 0]
    for k in (0, 1):  # event_time_ms, scored_time_ms: zigzag varint longs
        acc = shift = 0
        while True:
            b = value[i]
            i += 1
            acc |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 63:
                return None
        longs[k] = (acc >> 1) ^ -(acc & 1)
    if i != len(value):
        return None
    return event_id, asset_id, model, cls, confidence, longs[0], longs[1]
