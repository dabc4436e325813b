"""`driftline train`'s settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from driftline.services.runtime.settings import DriftlineSettings, default_artifact_root


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
    group_id: str | None = Field(
        default=None, description="Consumer group (default <topic prefix>driftline-trainer)"
    )
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

    @property
    def effective_group_id(self) -> str:
        return self.group_id or f"{self.kafka.topic_prefix}driftline-trainer"
