"""`driftline infer`'s settings."""

from __future__ import annotations

import socket

from pydantic import Field

from driftline.schemas.contracts import MODEL_NAMES
from driftline.services.runtime.settings import DriftlineSettings, Modality

# Micro-batch defaults per modality: sensor windows are tiny, photos cost ~1 ms each to decode.
# Batches close as soon as nothing more is waiting (no wait by default) and grow up to
# these sizes under a backlog.
DEFAULT_MAX_BATCH = {"sensor": 512, "image": 64}
DEFAULT_MAX_WAIT_MS = {"sensor": 0, "image": 0}


class InferenceSettings(DriftlineSettings):
    """`driftline infer`: one consumer of one modality."""

    modality: Modality = "sensor"
    model_name: str | None = None
    group_id: str | None = None
    max_batch: int | None = Field(
        default=None, ge=1, description="Largest micro-batch (sensor 256, image 32)"
    )
    max_wait_ms: int | None = Field(
        default=None,
        ge=0,
        description="How long a batch with records waits for more (0: it closes as soon as "
        "nothing more is waiting)",
    )
    exactly_once: bool = Field(
        default=False, description="One Kafka transaction per batch (read_committed readers)"
    )
    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="Stable per instance: names the transactional id, so a restart fences "
        "the previous incarnation's open transaction at once",
    )
    transaction_timeout_ms: int = Field(default=30_000, ge=1000)
    transaction_call_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest a batch's transaction may take to commit (offsets and commit "
        "together), and to set up a new transactional producer, before it is given up: the "
        "producer is rebuilt and the batch read again from the group's committed offsets",
    )
    max_value_bytes: int = Field(default=1 << 20, ge=1, description="Larger records dead-letter")
    max_image_bytes: int = Field(default=4 << 20, ge=1)
    max_image_pixels: int = Field(default=4096 * 4096, ge=1, description="Decompression-bomb limit")
    image_uri_prefixes: list[str] = Field(
        default_factory=list,
        description="Stores that CameraImage.image_uri may point into (e.g. s3://bucket/); "
        "references elsewhere are dead-lettered",
    )
    intra_op_threads: int = Field(default=1, ge=1)
    registry_timeout_s: float = Field(default=30.0, gt=0)
    public_key: str | None = Field(
        default=None,
        description="ed25519 public key (PEM text or a path): refuse unsigned or forged versions",
    )
    statistics_interval_ms: int = Field(default=5000, ge=0, description="librdkafka stats (lag)")
    linger_ms: int = Field(
        default=1,
        ge=0,
        description="How long results wait in the producer to share a request (under load "
        "they share one anyway, while the previous request is in flight)",
    )
    session_timeout_ms: int = Field(
        default=6000,
        ge=1000,
        description="A killed instance's partitions go to the others this long after its last "
        "heartbeat (sent by librdkafka's own thread, not the batch loop); the broker's "
        "group.min.session.timeout.ms (6 s by default) is the floor",
    )
    service_name: str = "inference"

    @property
    def effective_model_name(self) -> str:
        return self.model_name or MODEL_NAMES[self.modality]

    @property
    def effective_group_id(self) -> str:
        # The deployment's prefix: two deployments on one cluster never share a group.
        return self.group_id or f"{self.kafka.topic_prefix}driftline-inference-{self.modality}"

    @property
    def batch_size(self) -> int:
        if self.max_batch:
            return self.max_batch
        # A transaction costs a few broker round trips: exactly-once spreads it over more events.
        return DEFAULT_MAX_BATCH[self.modality] * (4 if self.exactly_once else 1)

    @property
    def batch_wait_s(self) -> float:
        wait_ms = (
            self.max_wait_ms if self.max_wait_ms is not None else DEFAULT_MAX_WAIT_MS[self.modality]
        )
        return wait_ms / 1000.0

    @property
    def transactional_id(self) -> str:
        return f"{self.effective_group_id}-{self.instance_id}"
