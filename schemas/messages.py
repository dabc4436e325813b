"""Typed, frozen messages: one msgspec Struct per Avro record in schemas/avro."""

from __future__ import annotations

from typing import ClassVar

import msgspec
import numpy as np
import numpy.typing as npt

SCHEMA_VERSION = 1

MODALITY_SENSOR = "sensor"
MODALITY_IMAGE = "image"
MODALITIES = (MODALITY_SENSOR, MODALITY_IMAGE)


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every message; `avro_name` names its schema in schemas/avro."""

    avro_name: ClassVar[str] = ""
    schema_version: int = SCHEMA_VERSION


class SensorWindow(Message, frozen=True, kw_only=True):
    """A window of float32 samples, [channels x n_samples], from one sensor of one asset."""

    avro_name: ClassVar[str] = "SensorWindow"
    event_id: str
    asset_id: str
    sensor_id: str
    event_time_ms: int
    sample_rate_hz: float
    channels: list[str]
    n_samples: int
    samples: bytes

    def array(self) -> npt.NDArray[np.float32]:
        """The samples as a [channels, n_samples] float32 view (no copy)."""
        return np.frombuffer(self.samples, dtype="<f4").reshape(len(self.channels), self.n_samples)


class CameraImage(Message, frozen=True, kw_only=True):
    """An inspection photo of an asset, inline (JPEG/PNG bytes) or by reference."""

    avro_name: ClassVar[str] = "CameraImage"
    event_id: str
    asset_id: str
    camera_id: str
    event_time_ms: int
    content_type: str
    image: bytes | None = None
    image_uri: str | None = None


class InferenceResult(Message, frozen=True, kw_only=True):
    """The score one model version gave one event."""

    avro_name: ClassVar[str] = "InferenceResult"
    event_id: str
    asset_id: str
    modality: str
    model_name: str
    model_version: int
    classes: list[str]
    probabilities: bytes
    predicted_class: str
    confidence: float
    event_time_ms: int
    scored_time_ms: int

    def probability_array(self) -> npt.NDArray[np.float32]:
        return np.frombuffer(self.probabilities, dtype="<f4")


LABEL_SCHEMA_VERSION = 2  # adds asset inspections (see schemas/writers.py for version 1)


class Label(Message, frozen=True, kw_only=True):
    """Delayed ground truth: one event's true class, or an inspection of an asset.

    A per-event label names `event_id` (and `asset_id`, which routes it to the join). An asset
    inspection has no event_id: it says asset `asset_id` was found in condition `true_class` at
    `inspection_time_ms` (default: `label_time_ms`), and that this holds for the asset's events
    from `lookback_ms` before then up to then.
    """

    avro_name: ClassVar[str] = "Label"
    schema_version: int = LABEL_SCHEMA_VERSION
    event_id: str | None = None
    true_class: str
    source: str
    label_time_ms: int
    asset_id: str | None = None
    inspection_time_ms: int | None = None
    lookback_ms: int | None = None

    @property
    def is_inspection(self) -> bool:
        return self.event_id is None

    def interval(self) -> tuple[int, int]:
        """The event times [start, end] an inspection holds for (both ends included)."""
        end = self.label_time_ms if self.inspection_time_ms is None else self.inspection_time_ms
        return end - (self.lookback_ms or 0), end


class LabelledWindow(Message, frozen=True, kw_only=True):
    """An original input joined to its label and to the prediction served for it."""

    avro_name: ClassVar[str] = "LabelledWindow"
    event_id: str
    asset_id: str
    modality: str
    event_time_ms: int
    label_time_ms: int
    true_class: str
    input_type: str
    input: bytes
    predicted_class: str | None = None
    confidence: float | None = None
    model_name: str | None = None
    model_version: int | None = None


class TensorSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Name, numpy dtype and shape (-1 = dynamic) of one model input or output."""

    name: str
    dtype: str
    shape: list[int]


class OffsetRange(msgspec.Struct, frozen=True, kw_only=True):
    """Offsets [start_offset, end_offset) of one partition."""

    partition: int
    start_offset: int
    end_offset: int


class Lineage(msgspec.Struct, frozen=True, kw_only=True):
    """What data trained a model version."""

    source: str
    ranges: list[OffsetRange] = msgspec.field(default_factory=list)
    parent_version: int | None = None
    seed: int | None = None
    # Event-time spans of what trained and what judged this version (None when unknown).
    train_start_ms: int | None = None
    train_end_ms: int | None = None
    holdout_start_ms: int | None = None
    holdout_end_ms: int | None = None
    change_point_ms: int | None = None


STATUS_CHAMPION = "champion"
STATUS_CHALLENGER = "challenger"
STATUS_REJECTED = "rejected"
STATUS_RETIRED = "retired"


class FeatureHistogram(msgspec.Struct, frozen=True, kw_only=True):
    """A binned distribution: inner edges, and one fraction per bin (outer bins open)."""

    name: str
    edges: list[float]
    fractions: list[float]


class ReferenceProfile(msgspec.Struct, frozen=True, kw_only=True):
    """What the training data and the holdout confidences looked like, for drift tests."""

    count: int
    features: list[FeatureHistogram]


class ModelVersion(Message, frozen=True, kw_only=True):
    """An immutable model version: its artifact, signatures, metrics and lineage."""

    avro_name: ClassVar[str] = "ModelVersion"
    name: str
    version: int
    modality: str
    artifact_uri: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    classes: list[str]
    lineage: Lineage
    status: str
    created_time_ms: int
    signature: bytes | None = None
    signing_key_id: str | None = None
    weights_uri: str | None = None
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    reference: ReferenceProfile | None = None


class DriftSignal(Message, frozen=True, kw_only=True):
    """Whether a model version's recent inputs or confidences drifted from its reference."""

    avro_name: ClassVar[str] = "DriftSignal"
    model_name: str
    model_version: int
    statistic: str
    score: float
    threshold: float
    drifted: bool
    window_start_ms: int
    window_end_ms: int
    sample_count: int
    feature_scores: dict[str, float] = msgspec.field(default_factory=dict)
    live_accuracy: float | None = None


class Alert(Message, frozen=True, kw_only=True):
    """A fault raised for one asset, with the events that support it."""

    avro_name: ClassVar[str] = "Alert"
    alert_id: str
    asset_id: str
    severity: str
    reason: str
    predicted_class: str
    evidence_event_ids: list[str]
    model_name: str
    model_version: int
    raised_time_ms: int


class DeadLetter(Message, frozen=True, kw_only=True):
    """Why a record was dead-lettered, and the record itself."""

    avro_name: ClassVar[str] = "DeadLetter"
    source_topic: str
    source_partition: int
    source_offset: int
    error_class: str
    error_message: str
    service: str
    failed_time_ms: int
    key: bytes | None = None
    value: bytes | None = None


MESSAGE_TYPES: tuple[type[Message], ...] = (
    SensorWindow,
    CameraImage,
    InferenceResult,
    Label,
    LabelledWindow,
    ModelVersion,
    DriftSignal,
    Alert,
    DeadLetter,
)
