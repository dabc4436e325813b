"""The alerting consumer: the shared batch loop driving the alerts handler."""

from __future__ import annotations

from collections.abc import Callable

from driftline.services.alerts.alertmanager import AlertmanagerPath
from driftline.services.alerts.handler import AlertsHandler, BatchStats
from driftline.services.alerts.metrics import AlertsMetrics
from driftline.services.alerts.settings import AlertsSettings
from driftline.services.alerts.webhook import WebhookSender
from driftline.services.core.alerting import AlertEngine
from driftline.services.core.batching import BatchPolicy
from driftline.services.runtime.batchloop import BatchLoop, LoopConfig, LoopMetrics
from driftline.services.runtime.metrics import Health


class AlertsConsumer:
    """The shared batch loop driving the alerts handler on inference.results."""

    def __init__(
        self,
        settings: AlertsSettings,
        metrics: AlertsMetrics,
        webhook: WebhookSender | None = None,
        health: Health | None = None,
        alertmanager: AlertmanagerPath | None = None,
    ) -> None:
        self.handler = AlertsHandler(settings, metrics, webhook, alertmanager)
        config = LoopConfig(
            kafka=settings.kafka,
            group_id=settings.effective_group_id,
            topics=[self.handler.source],
            policy=BatchPolicy(settings.max_batch, settings.batch_wait_s),
        )
        self.loop = BatchLoop(config, self.handler, LoopMetrics(metrics.batch_failures), health)

    @property
    def assigned(self) -> set[tuple[str, int]]:
        return self.loop.assigned

    @property
    def engine(self) -> AlertEngine:
        return self.handler.engine

    def run(
        self, stop: Callable[[], bool], on_batch: Callable[[BatchStats], None] | None = None
    ) -> None:
        """Consume until stop() is true, finish the records in hand, then leave the group."""
        self.loop.run(stop, on_batch)
