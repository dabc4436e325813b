"""`driftline alerts`: build the rule, the webhook and the metrics server, then run the loop."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from driftline.services.alerts.consumer import AlertsConsumer
from driftline.services.alerts.handler import BatchStats
from driftline.services.alerts.metrics import AlertsMetrics
from driftline.services.alerts.settings import AlertsSettings
from driftline.services.alerts.webhook import HttpPost, WebhookSender
from driftline.services.runtime import metrics as m

log = logging.getLogger(__name__)


def webhook_for(
    settings: AlertsSettings, metrics: AlertsMetrics, post: HttpPost | None = None
) -> WebhookSender | None:
    """The webhook sender of the settings, or None when no URL is configured."""
    if settings.webhook_url is None:
        return None
    return WebhookSender(
        settings.webhook_url.get_secret_value(),
        timeout_s=settings.webhook_timeout_s,
        retries=settings.webhook_retries,
        backoff_base_s=settings.webhook_backoff_base_s,
        backoff_max_s=settings.webhook_backoff_max_s,
        post=post,
        on_retry=metrics.webhook_retries.inc,
    )


def run(
    settings: AlertsSettings,
    stop: Callable[[], bool],
    on_batch: Callable[[BatchStats], None] | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> None:
    """Raise alerts from inference results until stop() is true."""
    reg = metrics_registry or CollectorRegistry()
    metrics = AlertsMetrics(reg)
    webhook = webhook_for(settings, metrics)
    health = m.Health(ready=lambda: bool(consumer.assigned))
    consumer = AlertsConsumer(settings, metrics, webhook, health)
    log.info(
        "alerting on %s: %d of the last %d windows, cooldown %.0fs, webhook %s",
        consumer.handler.source,
        settings.k,
        settings.n,
        settings.cooldown_s,
        webhook.target if webhook is not None else "off",
    )
    with m.metrics_server(reg, health, settings.metrics_port):
        consumer.run(stop, on_batch)
