"""Settings of `driftline features`: Redis, window sizes, join retention, drift, flush cadence."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from driftline.schemas.topics import LABEL_RETENTION_MS
from driftline.services.core.profile import PSI_DRIFT_THRESHOLD
from driftline.services.core.windows import WindowSpec
from driftline.services.runtime.settings import DriftlineSettings

Role = Literal["all", "stats", "join"]


class FeaturesSettings(DriftlineSettings):
    """`driftline features`: env DRIFTLINE_REDIS_URL, DRIFTLINE_JOIN_RETENTION_S, ..."""

    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_key_prefix: str = "driftline:"
    redis_timeout_s: float = Field(default=2.0, gt=0)
    app_id: str = Field(default="driftline-features", description="faust app id (after prefix)")
    role: Role = Field(default="all", description="stats, join, or both in one worker (all)")
    table_store: str = Field(
        default="rocksdb://",
        description="faust table store: rocksdb:// (state on disk under data_dir) or memory://",
    )
    table_memory_mb: int = Field(
        default=64, ge=8, description="RocksDB cache of all tables of a worker (memtables too)"
    )
    data_dir: str = Field(
        default=".driftline/features",
        description="faust's working files and the tables' RocksDB databases (a dir per app "
        "id); one per worker: two workers on one machine need two",
    )
    session_timeout_s: float = Field(default=30.0, gt=0, description="consumer group session")
    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    join_partitions: int = Field(default=6, ge=1, description="partitions of the join topic")
    service_name: str = "features"

    bucket_s: int = Field(default=60, ge=1, description="tumbling window size")
    hopping_s: int = Field(default=600, ge=1, description="hopping window size")
    hop_s: int = Field(default=60, ge=1, description="hopping window step")
    allowed_lateness_s: int = Field(default=300, ge=0, description="older events are dropped")
    low_confidence: float = Field(default=0.6, ge=0, le=1, description="low-confidence cutoff")
    stats_ttl_s: int = Field(default=86_400, ge=1, description="TTL of window hashes")
    latest_ttl_s: int = Field(default=7 * 86_400, ge=1, description="TTL of per-asset hashes")

    join_retention_s: int = Field(
        default=LABEL_RETENTION_MS // 1000,
        ge=1,
        description="labels later than this after their event expire (inputs' topic retention "
        "must cover it: schemas.topics.input_retention_ms)",
    )
    join_grace_s: int = Field(default=300, ge=0, description="kept past retention before eviction")
    label_wait_s: int = Field(
        default=600, ge=0, description="a label waits for its event till inputs pass it by this"
    )
    evict_interval_s: float = Field(default=30.0, gt=0)

    accuracy_bucket_s: int = Field(
        default=600, ge=1, description="live accuracy buckets of event time (demo: 10-30 s)"
    )
    accuracy_horizon_s: int = Field(
        default=86_400, ge=1, description="event time kept behind the newest accuracy bucket"
    )
    accuracy_min_labels: int = Field(
        default=30, ge=1, description="labels a bucket needs before it is shown as live accuracy"
    )

    drift_window_s: int = Field(default=600, ge=1, description="event time compared")
    drift_interval_s: float = Field(default=30.0, gt=0)
    drift_min_samples: int = Field(default=200, ge=1)
    drift_max_samples: int = Field(default=20_000, ge=1)
    drift_threshold: float = Field(default=PSI_DRIFT_THRESHOLD, gt=0)
    registry_timeout_s: float = Field(default=20.0, gt=0)

    flush_interval_s: float = Field(default=1.0, gt=0, description="Redis write cadence")
    redis_retry_max_s: float = Field(default=15.0, gt=0, description="longest retry backoff")
    batch_max: int = Field(default=5000, ge=1, description="records per agent batch")
    batch_wait_s: float = Field(default=0.5, gt=0, description="longest wait to fill one")
    commit_interval_s: float = Field(default=1.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: SecretStr) -> SecretStr:
        # redis-py would refuse it later with a traceback; the URL may hold a password.
        scheme = url.get_secret_value().partition("://")[0].lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://host:port/db, rediss://... or unix://... URL")
        return url

    @property
    def windows(self) -> WindowSpec:
        return WindowSpec(self.bucket_s * 1000, self.hopping_s * 1000, self.hop_s * 1000)

    @property
    def faust_app_id(self) -> str:
        return f"{self.kafka.topic_prefix}{self.app_id}"

    @property
    def stats_changelog_topic(self) -> str:
        """The stats table's changelog (faust's name for it), whichever runs the role."""
        return f"{self.faust_app_id}-stats-changelog"

    @property
    def stats_group_id(self) -> str:
        """The consumer group of `--role stats` workers (the batch loop, not faust's group)."""
        return f"{self.faust_app_id}-stats"

    @property
    def on_disk(self) -> bool:
        """Whether the tables are on RocksDB (else in faust's memory store)."""
        return self.table_store.split(":", 1)[0] == "rocksdb"

    @property
    def runs_stats(self) -> bool:
        return self.role in ("all", "stats")

    @property
    def runs_join(self) -> bool:
        return self.role in ("all", "join")
