"""The topic table: every topic's name, key, value type and configuration, with a name prefix."""

from __future__ import annotations

from dataclasses import dataclass, replace

DAY_MS = 24 * 3600 * 1000
MIB = 1024 * 1024

# How late a label may come after its event (field inspections: weeks). The join reads a
# labelled event's input back from sensor.windows / camera.images by offset, so those topics
# keep their records this long plus a margin; `driftline topics create` sets it. The features
# app's DRIFTLINE_JOIN_RETENTION_S defaults to it; a longer one needs `topics create
# --label-retention-s` (or the topics' retention.ms raised) to match.
LABEL_RETENTION_MS = 30 * DAY_MS
INPUT_RETENTION_MARGIN_MS = 2 * DAY_MS


def input_retention_ms(label_retention_ms: int = LABEL_RETENTION_MS) -> int:
    """Retention of the input topics that covers labels up to `label_retention_ms` late."""
    return label_retention_ms + INPUT_RETENTION_MARGIN_MS


SENSOR_WINDOWS = "sensor.windows"
CAMERA_IMAGES = "camera.images"
INFERENCE_RESULTS = "inference.results"
FEEDBACK_LABELS = "feedback.labels"
TRAINING_WINDOWS = "training.windows"
MODELS_REGISTRY = "models.registry"
ALERTS = "alerts"
DRIFT_SIGNALS = "drift.signals"
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class TopicSpec:
    """One row of the topic table (base name, without the deployment prefix)."""

    base: str
    key: str
    value_type: str
    partitions: int
    cleanup_policy: str = "delete"
    retention_ms: int = 7 * DAY_MS
    max_message_bytes: int = 1 * MIB

    def config(self) -> dict[str, str]:
        """Topic-level configuration for the admin API."""
        conf = {
            "cleanup.policy": self.cleanup_policy,
            "max.message.bytes": str(self.max_message_bytes),
        }
        # A compacted registry keeps every model's latest version forever.
        conf["retention.ms"] = "-1" if self.cleanup_policy == "compact" else str(self.retention_ms)
        return conf


TOPIC_TABLE: tuple[TopicSpec, ...] = (
    TopicSpec(
        SENSOR_WINDOWS,
        "asset_id",
        "SensorWindow",
        partitions=6,
        retention_ms=input_retention_ms(),
    ),
    TopicSpec(
        CAMERA_IMAGES,
        "asset_id",
        "CameraImage",
        partitions=6,
        retention_ms=input_retention_ms(),
        max_message_bytes=8 * MIB,
    ),
    TopicSpec(INFERENCE_RESULTS, "asset_id", "InferenceResult", partitions=6),
    TopicSpec(FEEDBACK_LABELS, "asset_id", "Label", partitions=3),
    TopicSpec(
        TRAINING_WINDOWS,
        "asset_id",
        "LabelledWindow",
        partitions=3,
        retention_ms=30 * DAY_MS,
        max_message_bytes=8 * MIB,
    ),
    TopicSpec(
        MODELS_REGISTRY, "model name", "ModelVersion", partitions=1, cleanup_policy="compact"
    ),
    TopicSpec(ALERTS, "asset_id", "Alert", partitions=3, retention_ms=30 * DAY_MS),
    TopicSpec(DRIFT_SIGNALS, "model name", "DriftSignal", partitions=1, retention_ms=30 * DAY_MS),
)

INPUT_TOPICS = (SENSOR_WINDOWS, CAMERA_IMAGES)

# The topics with a dead-letter topic: those consumers read, and alerts (alerts no webhook took).
DLQ_SOURCES = (
    SENSOR_WINDOWS,
    CAMERA_IMAGES,
    FEEDBACK_LABELS,
    TRAINING_WINDOWS,
    INFERENCE_RESULTS,
    ALERTS,
)


def dlq_spec(source: TopicSpec) -> TopicSpec:
    """The dead-letter topic of a source topic: original key and bytes, reasons in headers."""
    return TopicSpec(
        source.base + DLQ_SUFFIX,
        key="original key",
        value_type="original bytes",
        partitions=1,
        retention_ms=30 * DAY_MS,
        max_message_bytes=source.max_message_bytes + MIB,
    )


def all_specs(label_retention_ms: int | None = None) -> tuple[TopicSpec, ...]:
    """The table plus a dead-letter topic for every topic that consumers read, and alerts.dlq.

    With `label_retention_ms`, the input topics keep their records long enough for labels
    that late (input_retention_ms), never less than the table says.
    """
    table = TOPIC_TABLE
    if label_retention_ms is not None:
        keep = input_retention_ms(label_retention_ms)
        table = tuple(
            replace(spec, retention_ms=max(spec.retention_ms, keep))
            if spec.base in INPUT_TOPICS
            else spec
            for spec in TOPIC_TABLE
        )
    by_name = {spec.base: spec for spec in table}
    return table + tuple(dlq_spec(by_name[name]) for name in DLQ_SOURCES)


@dataclass(frozen=True)
class Topics:
    """Topic names of one deployment: every name carries the same prefix."""

    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    def dlq(self, base: str) -> str:
        return f"{self.prefix}{base}{DLQ_SUFFIX}"

    @property
    def sensor_windows(self) -> str:
        return self.name(SENSOR_WINDOWS)

    @property
    def camera_images(self) -> str:
        return self.name(CAMERA_IMAGES)

    @property
    def inference_results(self) -> str:
        return self.name(INFERENCE_RESULTS)

    @property
    def feedback_labels(self) -> str:
        return self.name(FEEDBACK_LABELS)

    @property
    def training_windows(self) -> str:
        return self.name(TRAINING_WINDOWS)

    @property
    def models_registry(self) -> str:
        return self.name(MODELS_REGISTRY)

    @property
    def alerts(self) -> str:
        return self.name(ALERTS)

    @property
    def drift_signals(self) -> str:
        return self.name(DRIFT_SIGNALS)
