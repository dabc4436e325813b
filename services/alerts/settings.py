"""Settings of `driftline alerts`: the alert rule, the webhook and the consumer."""

from __future__ import annotations

from typing import Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from driftline.schemas.contracts import FAULTY_CLASSES
from driftline.services.core.alerting import AlertRules
from driftline.services.runtime.settings import DriftlineSettings


class AlertsSettings(DriftlineSettings):
    """`driftline alerts`: env DRIFTLINE_K, DRIFTLINE_COOLDOWN_S, DRIFTLINE_WEBHOOK_URL,
    DRIFTLINE_ALERTMANAGER_URL, ..."""

    # The rule (services.core.alerting).
    k: int = Field(default=3, ge=1, description="Faulty windows among the last n that raise")
    n: int = Field(default=5, ge=1, description="Windows per asset the rule looks at")
    cooldown_s: float = Field(
        default=300.0, ge=0, description="Event time after an alert before the next (per asset)"
    )
    min_confidence: float = Field(
        default=0.5, ge=0, le=1, description="Less confident fault predictions count as healthy"
    )
    critical_count: int | None = Field(
        default=None, ge=1, description="Cracked windows of the last n that make it critical (n)"
    )
    faulty_classes: list[str] = Field(default_factory=lambda: list(FAULTY_CLASSES))
    max_assets: int = Field(default=100_000, ge=1, description="Assets tracked (LRU beyond)")

    # The webhook: HTTP POST of each alert as JSON. The URL may hold a token: kept secret.
    webhook_url: SecretStr | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_retries: int = Field(default=3, ge=0, description="Retries after the first attempt")
    webhook_backoff_base_s: float = Field(default=0.5, gt=0)
    webhook_backoff_max_s: float = Field(default=10.0, gt=0)
    webhook_batch_budget_s: float = Field(
        default=60.0,
        gt=0,
        description="Webhook time per batch; alerts left when it is spent are skipped (they "
        "are on the alerts topic and alerts.dlq): keeps a dead webhook from stalling the "
        "consumer past max.poll.interval.ms",
    )

    # Alertmanager: API v2 alerts, fired, resolved and re-sent. The URL may hold credentials.
    alertmanager_url: SecretStr | None = Field(
        default=None, description="Alertmanager base URL, e.g. http://alertmanager:9093"
    )
    alertmanager_resend_s: float = Field(
        default=60.0,
        gt=0,
        description="Re-send the active alerts this often (endsAt is 4 intervals ahead), so "
        "Alertmanager keeps them firing",
    )
    alertmanager_generator_url: str | None = Field(
        default=None, description="generatorURL of every alert (a dashboard, say)"
    )
    alertmanager_timeout_s: float = Field(default=5.0, gt=0)
    alertmanager_retries: int = Field(default=3, ge=0)
    alertmanager_batch_budget_s: float = Field(
        default=30.0,
        gt=0,
        description="Alertmanager time per batch (and per re-send); a batch's alerts it did "
        "not take by then are on alerts.dlq",
    )

    # The consumer.
    group_id: str | None = Field(
        default=None, description="Consumer group (default <topic prefix>driftline-alerts)"
    )
    max_batch: int = Field(default=500, ge=1)
    max_wait_ms: int = Field(default=100, ge=0)
    replay_lookback: int = Field(
        default=5000,
        ge=0,
        description="Records per partition re-read before the committed offset on assignment, "
        "to rebuild the rule's state (no output) so a replay raises the same alerts",
    )
    flush_timeout_s: float = Field(default=30.0, gt=0)
    service_name: str = "alerts"

    @field_validator("webhook_url", "alertmanager_url")
    @classmethod
    def _webhook_http(cls, url: SecretStr | None) -> SecretStr | None:
        # The sender refuses it too, but only once the consumer starts; never echo a token.
        if url is not None:
            parts = urlsplit(url.get_secret_value())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http(s)://host/... URL")
        return url

    @field_validator("alertmanager_generator_url")
    @classmethod
    def _generator_absolute(cls, url: str | None) -> str | None:
        if url is not None and not (urlsplit(url).scheme and urlsplit(url).netloc):
            raise ValueError("must be an absolute URL such as https://grafana/d/driftline")
        return url

    @model_validator(mode="after")
    def _k_within_n(self) -> Self:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        if self.critical_count is not None and self.critical_count > self.n:
            raise ValueError(f"critical_count ({self.critical_count}) must not exceed n")
        return self

    @property
    def effective_group_id(self) -> str:
        return self.group_id or f"{self.kafka.topic_prefix}driftline-alerts"

    @property
    def rules(self) -> AlertRules:
        return AlertRules(
            k=self.k,
            n=self.n,
            cooldown_ms=round(self.cooldown_s * 1000),
            min_confidence=self.min_confidence,
            faulty_classes=frozenset(self.faulty_classes),
            critical_count=self.critical_count,
            max_assets=self.max_assets,
        )

    @property
    def batch_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0
