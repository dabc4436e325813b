"""`driftline train`: consume labelled windows, decide when to retrain, train one model at a time.

The trainer reads training.windows and drift.signals (trainer.reading: where to start after a
restart, dead letters), keeps per model what decides its next run (trainer.modelstate: drift
signals, change points, regimes), and trains.

Training. A trigger (services.core.triggers) starts a run on a snapshot of the training set in
a worker thread, at most one per model, while this loop keeps reading. A run publishes only at
its very end (trainer.runs); a stop request cancels it between epochs, publishing nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry

from driftline.schemas.contracts import MODEL_NAMES
from driftline.schemas.messages import MODALITIES
from driftline.services.core.triggers import TRIGGER_MANUAL, decide
from driftline.services.runtime import metrics as m
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import FsspecArtifactStore
from driftline.trainer.dataset import TrainingBuffer
from driftline.trainer.fit import EpochReport
from driftline.trainer.metrics import TrainerMetrics
from driftline.trainer.modelstate import (
    ModelState,
    buffer_text,
    fold_outcome,
    policy_of,
    trigger_state,
    watch_outcomes,
)
from driftline.trainer.publish import KafkaRegistryWriter
from driftline.trainer.reading import WindowReader
from driftline.trainer.runs import (
    OUTCOME_CANCELLED,
    OUTCOME_FAILED,
    OUTCOME_SKIPPED,
    RunOutcome,
    TrainingRun,
)
from driftline.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

BATCH = 500
STATUS_EVERY_S = 30.0


class TrainerService:
    """The retraining service for every modality; run() until stop() is true."""

    def __init__(
        self,
        settings: TrainerSettings,
        metrics: TrainerMetrics,
        runner: TrainingRun | None = None,
        on_outcome: Callable[[RunOutcome], None] | None = None,
        health: m.Health | None = None,
    ) -> None:
        self.settings = settings
        self.health = health
        self.metrics = metrics
        self.runner = runner or TrainingRun(
            settings,
            KafkaRegistryWriter(settings.kafka, settings.registry_timeout_s),
            FsspecArtifactStore(settings.artifact_root),
        )
        self.on_outcome = on_outcome
        self.policy = policy_of(settings)
        self.states = {
            mod: ModelState(mod, MODEL_NAMES[mod], TrainingBuffer(settings.max_examples(mod)))
            for mod in MODALITIES
        }
        self.reader = WindowReader(settings, metrics, self.states)
        self.caught_up = self.reader.caught_up
        self.outcomes: list[RunOutcome] = []
        self._manual_requests: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- requests from other threads -------------------------------------------------------

    def request_now(self, modality: str | None = None) -> None:
        """Train now (one modality, or every one), as soon as the training set allows."""
        with self._lock:
            self._manual_requests.update([modality] if modality else MODALITIES)

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stop: Callable[[], bool], *, once: bool = False) -> list[RunOutcome]:
        """Consume and train until stop(); with once, train every requested model and return."""
        consumer = Consumer(
            self.settings.kafka.client_config(
                **{
                    "group.id": self.settings.effective_group_id,
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                    "max.partition.fetch.bytes": 8 * 1024 * 1024,
                }
            )
        )
        last_status = time.monotonic()
        try:
            snapshot = registry.read_snapshot(
                self.settings.kafka,
                self.settings.kafka.topics.models_registry,
                timeout_s=self.settings.registry_timeout_s,
            )
            self.reader.assign(consumer, snapshot)
            while not stop():
                if self.health is not None:
                    self.health.tick()
                msgs = consumer.consume(BATCH, timeout=self.settings.poll_timeout_s)
                if msgs:
                    self.reader.process(consumer, msgs)
                self._collect()
                self._maybe_train()
                self._update_gauges()
                if time.monotonic() - last_status > STATUS_EVERY_S:
                    last_status = time.monotonic()
                    self._log_status()
                if once and self.caught_up.is_set() and self._idle():
                    break
        finally:
            self._stopping.set()
            for state in self.states.values():
                if state.worker is not None:
                    log.warning("%s: stopping; cancelling the training in progress", state.name)
                    state.worker.join(timeout=60)
            self._collect()
            consumer.close()
        return self.outcomes

    def _idle(self) -> bool:
        with self._lock:
            pending = bool(self._manual_requests)
        return not pending and not any(s.manual or s.running for s in self.states.values())

    # -- trainings ---------------------------------------------------------------------------

    def _maybe_train(self) -> None:
        with self._lock:
            requested, self._manual_requests = self._manual_requests, set()
        for mod in requested:
            self.states[mod].manual = True
        now_ms = int(time.time() * 1000)
        for state in self.states.values():
            if self.caught_up.is_set():
                watch_outcomes(state, self.settings, self.metrics)
            reason = decide(self.policy, trigger_state(state, self.caught_up.is_set()), now_ms)
            if reason is not None:
                self._start(state, reason)
            elif state.manual and self.caught_up.is_set() and not state.running:
                # Asked for by hand, but the training set is too small: say so and move on.
                state.manual = False
                self._record(
                    RunOutcome(
                        state.name,
                        state.modality,
                        TRIGGER_MANUAL,
                        OUTCOME_SKIPPED,
                        0.0,
                        error=f"only {len(state.buffer)} labelled examples; "
                        f"training needs at least {self.policy.min_labels}",
                    )
                )

    def _start(self, state: ModelState, reason: str) -> None:
        data = state.buffer.snapshot()
        state.labels_at_start = state.new_labels
        state.drift_at_start = state.drift_pending
        state.drift_signal_at_start = state.drift_signal
        state.post_change_at_start = state.post_change
        change_point = state.change_point_at_start = state.regime_start_ms
        state.regime_at_start = state.regime_id
        state.superseded = False
        state.manual = False
        state.drift_pending = False
        log.info(
            "%s: training on %d examples (%s; %d new labels%s)",
            state.name,
            len(data),
            reason,
            state.new_labels,
            f"; {state.post_change} from after the change point" if change_point else "",
        )
        self.metrics.in_progress.labels(state.name).set(1)
        epochs = self.settings.epochs

        def on_epoch(rep: EpochReport) -> None:
            log.info(
                "%s: epoch %d/%d loss %.4f accuracy %.3f (%.1fs)",
                state.name,
                rep.epoch,
                rep.of or epochs,
                rep.loss,
                rep.train_accuracy,
                rep.seconds,
            )

        def work() -> None:
            state.outcome = self.runner.run(
                state.modality,
                data,
                source=self.reader.source,
                trigger=reason,
                on_epoch=on_epoch,
                cancelled=lambda: self._stopping.is_set() or state.superseded,
                change_point_ms=change_point,
            )

        state.outcome = None
        state.worker = threading.Thread(target=work, name=f"train-{state.modality}", daemon=True)
        state.worker.start()

    def _collect(self) -> None:
        """Fold the outcome of every finished run into its model's state."""
        for state in self.states.values():
            worker = state.worker
            if worker is None or worker.is_alive():
                continue
            state.worker = None
            self.metrics.in_progress.labels(state.name).set(0)
            outcome = state.outcome or RunOutcome(
                state.name, state.modality, "unknown", OUTCOME_FAILED, 0.0, error="worker died"
            )
            fold_outcome(state, outcome, int(time.time() * 1000))
            self._record(outcome)

    def _record(self, outcome: RunOutcome) -> None:
        self.outcomes.append(outcome)
        self.metrics.trainings.labels(outcome.model_name, outcome.trigger, outcome.outcome).inc()
        if outcome.seconds:
            self.metrics.training_seconds.labels(outcome.model_name).observe(outcome.seconds)
        if outcome.challenger is not None:
            decision = outcome.challenger.decision
            self.metrics.gate_decisions.labels(outcome.model_name, decision.decision).inc()
            self.metrics.gate_score.labels(outcome.model_name, "challenger").set(
                decision.challenger
            )
            if decision.champion is not None:
                self.metrics.gate_score.labels(outcome.model_name, "champion").set(
                    decision.champion
                )
        if outcome.ok or outcome.outcome == OUTCOME_CANCELLED:  # cancelling is not an error
            log.info("%s", outcome.summary())
        else:
            log.error("%s", outcome.summary())
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    # -- reporting ---------------------------------------------------------------------------

    def _update_gauges(self) -> None:
        now_s = time.time()
        for state in self.states.values():
            self.metrics.labels_buffered.labels(state.modality).set(len(state.buffer))
            self.metrics.labels_since_training.labels(state.modality).set(state.new_labels)
            if state.regime_start_ms is None:
                self.metrics.post_change_examples.labels(state.modality).set(0)
            span = state.buffer.span()
            if span is not None:
                age = self.metrics.example_age
                age.labels(state.modality, "oldest").set(max(0.0, now_s - span[0] / 1000))
                age.labels(state.modality, "newest").set(max(0.0, now_s - span[1] / 1000))

    def _log_status(self) -> None:
        running = [s.name for s in self.states.values() if s.running]
        log.info(
            "%s%s",
            buffer_text(self.states.values()),
            f"; training {', '.join(running)}" if running else "",
        )


def run(
    settings: TrainerSettings,
    stop: Callable[[], bool],
    *,
    now: bool = False,
    modality: str | None = None,
    once: bool = False,
    on_outcome: Callable[[RunOutcome], None] | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> list[RunOutcome]:
    """The trainer service; with once, catch up, train what was asked for, and return."""
    reg = metrics_registry or CollectorRegistry()
    metrics = TrainerMetrics(reg)
    service = TrainerService(settings, metrics, on_outcome=on_outcome)
    health = m.Health(ready=service.caught_up.is_set)
    service.health = health
    if now:
        service.request_now(modality)
    with m.metrics_server(reg, health, settings.metrics_port):
        return service.run(stop, once=once)
