"""`driftline alerts`: build the rule, the webhook, Alertmanager and the metrics server, then
run the loop."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from driftline.services.alerts.alertmanager import AlertmanagerPath, AlertmanagerSender, api_url
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


def alertmanager_for(
    settings: AlertsSettings, post: HttpPost | None = None
) -> AlertmanagerPath | None:
    """The Alertmanager path of the settings, or None when no URL is configured."""
    if settings.alertmanager_url is None:
        return None
    sender = AlertmanagerSender(
        api_url(settings.alertmanager_url.get_secret_value()),
        timeout_s=settings.alertmanager_timeout_s,
        retries=settings.alertmanager_retries,
        backoff_base_s=settings.webhook_backoff_base_s,
        backoff_max_s=settings.webhook_backoff_max_s,
        post=post,
    )
    return AlertmanagerPath(
        sender,
        resend_s=settings.alertmanager_resend_s,
        budget_s=settings.alertmanager_batch_budget_s,
        generator_url=settings.alertmanager_generator_url,
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
    alertmanager = alertmanager_for(settings)
    health = m.Health(ready=lambda: bool(consumer.assigned))
    consumer = AlertsConsumer(settings, metrics, webhook, health, alertmanager)
    log.info(
        "alerting on %s: %d of the last %d windows, cooldown %.0fs, webhook %s, alertmanager %s",
        consumer.handler.source,
        settings.k,
        settings.n,
        settings.cooldown_s,
        webhook.target if webhook is not None else "off",
        alertmanager.sender.target if alertmanager is not None else "off",
    )
    with m.metrics_server(reg, health, settings.metrics_port):
        consumer.run(stop, on_batch)
