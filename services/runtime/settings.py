"""Settings of every service: one frozen pydantic-settings object each, env prefix DRIFTLINE_.

Nested fields use a double underscore: DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS=host:9092.
Any librdkafka option passes through DRIFTLINE_KAFKA__CLIENT as JSON, e.g.
DRIFTLINE_KAFKA__CLIENT='{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}',
with the secrets in their own SecretStr fields so they never appear in logs or reprs.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftline.schemas.contracts import MODEL_NAMES
from driftline.schemas.topics import Topics

Modality = Literal["sensor", "image"]
LIBRDKAFKA_LOGGER = "driftline.librdkafka"
# Micro-batch defaults per modality: sensor windows are tiny, photos cost ~1 ms each to decode.
DEFAULT_MAX_BATCH = {"sensor": 256, "image": 32}
DEFAULT_MAX_WAIT_MS = {"sensor": 20, "image": 50}


def default_artifact_root() -> str:
    """file:// URI of .driftline/artifacts under the working directory."""
    return (Path.cwd() / ".driftline" / "artifacts").resolve().as_uri()


class KafkaSettings(BaseModel):
    """How to reach Kafka; `client` is passed to librdkafka unchanged."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    client: dict[str, str] = Field(default_factory=dict)
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_key_password: SecretStr | None = None

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka configuration: defaults, then the pass-through options, then overrides."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            # librdkafka's own log lines go through Python logging, not straight to stderr.
            "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
        }
        conf.update(self.client)
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        conf.update(overrides)
        return conf


class DriftlineSettings(BaseSettings):
    """Fields every service has."""

    model_config = SettingsConfigDict(
        env_prefix="DRIFTLINE_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    log_level: str = "INFO"
    metrics_port: int | None = Field(default=None, description="Serve /metrics here; off if unset")


class SimulatorSettings(DriftlineSettings):
    """`driftline simulate`: a fleet's sensor windows, photos and delayed labels."""

    assets: int = Field(default=50, ge=1, description="Insulators in the fleet")
    rate: float = Field(default=200.0, ge=0, description="Sensor windows per second, whole fleet")
    image_rate: float = Field(default=0.0, ge=0, description="Photos per second, whole fleet")
    count: int | None = Field(
        default=None, ge=1, description="Stop after this many events (windows and photos)"
    )
    seed: int = 7
    fault_fraction: float = Field(default=0.4, ge=0, le=1)
    evolve_per_s: float = Field(
        default=0.0,
        ge=0,
        description="Simulated hours of insulator ageing per real second (0: conditions fixed)",
    )
    label_fraction: float = Field(
        default=0.0, ge=0, le=1, description="Share of events a field inspection labels"
    )
    label_delay_min_s: float = Field(default=2.0, ge=0)
    label_delay_max_s: float = Field(default=10.0, ge=0)
    inspection_fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of labels sent as asset inspections instead of per-event labels",
    )
    inspection_lookback_s: float = Field(
        default=30.0, gt=0, description="How far back before the event an inspection holds"
    )
    scenario: str | None = Field(
        default=None, description="Drift scenario: a built-in name (steady, aging) or a TOML path"
    )
    drift_at_s: float | None = Field(
        default=None, gt=0, description="Move the scenario's first change to this time"
    )
    image_format: Literal["jpeg", "png"] = "jpeg"


class InferenceSettings(DriftlineSettings):
    """`driftline infer`: one consumer of one modality."""

    modality: Modality = "sensor"
    model_name: str | None = None
    group_id: str | None = None
    max_batch: int | None = Field(
        default=None, ge=1, description="Largest micro-batch (sensor 256, image 32)"
    )
    max_wait_ms: int | None = Field(
        default=None, ge=0, description="Longest wait from a batch's first event (20 / 50 ms)"
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
    service_name: str = "inference"

    @property
    def effective_model_name(self) -> str:
        return self.model_name or MODEL_NAMES[self.modality]

    @property
    def effective_group_id(self) -> str:
        return self.group_id or f"driftline-inference-{self.modality}"

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


class TrainerSettings(DriftlineSettings):
    """`driftline train`: the retraining service, its triggers, gate, publishing and bootstrap."""

    artifact_root: str = Field(default_factory=default_artifact_root)
    seed: int = 7
    epochs: int = Field(default=8, ge=1)
    batch_size: int = Field(default=128, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0)
    image_learning_rate: float = Field(default=1e-2, gt=0)
    bootstrap_windows: int = Field(default=8000, ge=100)
    bootstrap_images: int = Field(default=8000, ge=100)
    bootstrap_image_epochs: int = Field(
        default=10,
        ge=1,
        description="Epochs of the first image model, trained from scratch (retraining "
        "warm-starts from the champion and runs `epochs`)",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads torch trains with (default: torch's choice); lower it to leave "
        "cores to inference consumers on the same machine",
    )
    image_width: int = Field(
        default=16, ge=2, description="Channels of the image CNN's first layer"
    )
    group_id: str = "driftline-trainer"
    # Triggers (services.core.triggers).
    min_new_labels: int = Field(default=500, ge=1, description="Train after this many new labels")
    min_labels: int = Field(default=200, ge=10, description="Never train on fewer examples")
    min_drift_labels: int = Field(
        default=200, ge=1, description="New labels a drift signal needs before it trains"
    )
    max_age_s: float | None = Field(default=24 * 3600.0, gt=0, description="Retrain older models")
    retry_after_s: float = Field(default=300.0, ge=0, description="Wait after a failed run")
    # Drift-aware retraining (services.core.changepoint, services.core.gate.post_change_split).
    min_post_change_labels: int = Field(
        default=200,
        ge=20,
        description="After the served model's accuracy drops at a change point, train once "
        "this many labelled examples from after it are buffered",
    )
    regime_growth: float = Field(
        default=2.0,
        gt=1,
        description="Retrain each time the post-change examples grow by this factor",
    )
    change_min_drop: float = Field(
        default=0.1, gt=0, le=1, description="Smallest accuracy drop taken as a change point"
    )
    change_min_segment: int = Field(
        default=50, ge=10, description="Labelled outcomes needed on each side of a change point"
    )
    pre_change_share: float = Field(
        default=0.2, ge=0, lt=1, description="Share of pre-change examples in a training set"
    )
    min_adapt_examples: int = Field(
        default=1500,
        ge=1,
        description="Post-change examples are repeated up to this many per training set",
    )
    adapt_norm: bool = Field(
        default=True,
        description="After a change point, re-estimate a warm-started network's batch-norm "
        "statistics on the post-change inputs before fine-tuning (the image CNN has them)",
    )
    image_adapt_epochs: int = Field(
        default=8,
        ge=1,
        description="Epochs of an image retrain after a change point, once its batch-norm "
        "statistics are adapted (a few hundred post-change photos: each costs seconds)",
    )
    image_adapt_learning_rate: float = Field(
        default=1e-4,
        gt=0,
        description="Learning rate of that fine-tuning: gentle, so the adapted network is "
        "refined, not retrained (1e-3 undid what the statistics gained; docs/trainer.md)",
    )
    image_adapt_batch_size: int = Field(
        default=32,
        ge=1,
        description="Batch size of that fine-tuning: small, so a few hundred photos give "
        "enough steps",
    )
    # Training set and gate (services.core.gate).
    max_sensor_examples: int = Field(default=20000, ge=100)
    max_image_examples: int = Field(default=5000, ge=100)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    min_holdout: int = Field(default=50, ge=1)
    gate_metric: Literal["macro_f1", "accuracy"] = "macro_f1"
    gate_margin: float = Field(
        default=0.01,
        ge=-1,
        le=1,
        description="Challenger must win by this much (negative: may lose by at most that much)",
    )
    gate_min_score: float = Field(default=0.3, ge=0, le=1, description="Never promote below this")
    # Signing: the ed25519 private key as PEM text or a path to a PEM file (kept secret).
    signing_key: SecretStr | None = None
    # Verify the champion before warm-starting from it, like every consumer does.
    public_key: str | None = None
    registry_timeout_s: float = Field(default=30.0, gt=0)
    poll_timeout_s: float = Field(default=0.5, gt=0)
    service_name: str = "trainer"

    def max_examples(self, modality: str) -> int:
        return self.max_image_examples if modality == "image" else self.max_sensor_examples
