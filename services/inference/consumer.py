"""The inference consumer: the shared batch loop driving the inference handler."""

from __future__ import annotations

from collections.abc import Callable

from driftline.services.core.batching import BatchPolicy
from driftline.services.inference.handler import BatchStats, Decoder, InferenceHandler, ModelSource
from driftline.services.inference.metrics import InferenceMetrics
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.batchloop import BatchLoop, LoopConfig, LoopMetrics
from driftline.services.runtime.metrics import Health


class InferenceConsumer:
    """Scores one modality's topic with whatever model the source holds."""

    def __init__(
        self,
        settings: InferenceSettings,
        source_base: str,
        decoder: Decoder,
        models: ModelSource,
        metrics: InferenceMetrics,
        health: Health | None = None,
    ) -> None:
        self.handler = InferenceHandler(settings, source_base, decoder, models, metrics)
        config = LoopConfig(
            kafka=settings.kafka,
            group_id=settings.effective_group_id,
            topics=[self.handler.source],
            policy=BatchPolicy(settings.batch_size, settings.batch_wait_s),
            statistics_interval_ms=settings.statistics_interval_ms,
            session_timeout_ms=settings.session_timeout_ms,
        )
        self.loop = BatchLoop(
            config, self.handler, LoopMetrics(metrics.batch_failures, metrics.consumer_lag), health
        )

    @property
    def assigned(self) -> set[tuple[str, int]]:
        return self.loop.assigned

    def run(
        self, stop: Callable[[], bool], on_batch: Callable[[BatchStats], None] | None = None
    ) -> None:
        """Consume until stop() is true, finish the batch in hand, then leave the group."""
        self.loop.run(stop, on_batch)
