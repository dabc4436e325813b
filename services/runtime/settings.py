"""Settings every service shares: Kafka, and the base every service's settings extend.

Each service keeps its own settings in its package (one frozen pydantic-settings object each,
env prefix DRIFTLINE_).

Nested fields use a double underscore: DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS=host:9092.
Any librdkafka option passes through DRIFTLINE_KAFKA__CLIENT as JSON, e.g.
DRIFTLINE_KAFKA__CLIENT='{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}',
with the secrets in their own SecretStr fields so they never appear in logs or reprs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftline.schemas.topics import Topics

Modality = Literal["sensor", "image"]
LIBRDKAFKA_LOGGER = "driftline.librdkafka"
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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
    # Topic creation (`driftline topics create`); None: 3 replicas when the cluster has at
    # least three brokers, else 1, and min.insync.replicas 2 with three replicas or more.
    replication_factor: int | None = Field(default=None, ge=1)
    min_insync_replicas: int | None = Field(default=None, ge=1)

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
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL")
    log_format: LogFormat = Field(
        default="text",
        description="text for people; json for log pipelines: one object per line "
        "(runtime/logs.py)",
    )
    metrics_port: int | None = Field(default=None, description="Serve /metrics here; off if unset")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value
