"""The alerting consumer's collectors.

Collectors are built on a registry passed in, never at import, so tests use a fresh one;
the metric names are the runtime's (services/runtime/metrics.py), one list for dashboards.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from driftline.services.runtime.metrics import (
    ALERT_ASSETS_TRACKED,
    ALERTMANAGER_POSTS,
    ALERTS_DEAD_LETTERED,
    ALERTS_RAISED,
    ALERTS_RESOLVED,
    ALERTS_SUPPRESSED,
    BATCH_FAILURES,
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    EVENTS_PRODUCED,
    WEBHOOK_DELIVERIES,
    WEBHOOK_RETRIES,
)


class AlertsMetrics:
    """The alerting consumer's collectors; labels are bounded (severity, rule, reason, outcome)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumed = Counter(EVENTS_CONSUMED, "Records consumed", ["topic"], registry=registry)
        self.produced = Counter(EVENTS_PRODUCED, "Records produced", ["topic"], registry=registry)
        self.dead_letters = Counter(
            DEAD_LETTERS, "Records dead-lettered", ["topic", "reason"], registry=registry
        )
        self.batch_failures = Counter(
            BATCH_FAILURES,
            "Batches rewound and retried, by the stage that failed",
            ["stage"],
            registry=registry,
        )
        self.raised = Counter(
            ALERTS_RAISED,
            "Alerts raised, by severity and rule (reason: k_of_n, escalation)",
            ["severity", "reason"],
            registry=registry,
        )
        self.suppressed = Counter(
            ALERTS_SUPPRESSED,
            "Faulty windows that raised no alert (below_k, cooldown, duplicate, late)",
            ["reason"],
            registry=registry,
        )
        self.resolved = Counter(
            ALERTS_RESOLVED,
            "Active alerts resolved: their asset's last n windows all healthy again",
            registry=registry,
        )
        self.assets_tracked = Gauge(
            ALERT_ASSETS_TRACKED,
            "Assets whose recent windows the alert rule holds",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            WEBHOOK_DELIVERIES,
            "Alert webhook deliveries: delivered, rejected (4xx), failed (retries spent), skipped",
            ["outcome"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            ALERTS_DEAD_LETTERED,
            "Alerts the webhook or Alertmanager did not take, put on alerts.dlq: "
            "webhook_failed, webhook_rejected, webhook_skipped, alertmanager_failed, ...",
            ["reason"],
            registry=registry,
        )
        self.alertmanager_posts = Counter(
            ALERTMANAGER_POSTS,
            "POSTs to Alertmanager by purpose (batch: new and resolved alerts; resend: the "
            "active ones) and outcome (delivered, rejected, failed, skipped)",
            ["purpose", "outcome"],
            registry=registry,
        )
        self.webhook_retries = Counter(
            WEBHOOK_RETRIES,
            "Webhook attempts retried after a 429, 5xx or network error",
            registry=registry,
        )
