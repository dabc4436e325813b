"""`driftline train`: consume labelled windows, decide when to retrain, train one model at a time.

Reading. The trainer reads training.windows with manual partition assignment and keeps, per
modality, a bounded training set ordered by event time. It also reads drift.signals.

Restart recovery (no local state). At start it reads the registry: each model's newest version
trained from training.windows names, in its lineage, the offset ranges it was trained on. The
trainer re-reads every partition from the smallest of those start offsets (from the earliest
retained offset for a partition or model with no such lineage), which rebuilds the training
set the last run saw plus everything after it; records at or past a lineage's end offsets count
as new labels. Drift signals are re-read from the time of each model's last run. Until the
trainer has caught up with the end offsets it saw at start, no training is triggered, so a
restart never trains on half its history.

Dead letters. A labelled window that cannot be learned from (wrong shape, unknown class,
missing input, undecodable) goes to training.windows.dlq with the reason. The consumer group's
committed offsets record how far dead-lettering has got (they are committed after the dead
letters are acknowledged), so a restart that re-reads older records does not dead-letter them
twice.

Drift-aware retraining. Every labelled window says whether the prediction served then was
right. At most every DETECT_EVERY_S the trainer scans the outcomes of the model version that
serves the newest examples, in event-time order, for a significant drop (services.core.
changepoint). A drop starts a regime at its event time: the next run waits for enough examples
from after it, trains with them dominating and gates both models on a holdout drawn from after
it; later runs keep that weighting and come each time the new world's examples have doubled.
The change point is recorded in each version's lineage, so a restarted trainer resumes the
regime from the registry.

Training. A trigger (services.core.triggers) starts a run on a snapshot of the training set in
a worker thread, at most one per model, while this loop keeps reading. A run publishes only at
its very end (trainer.runs); a stop request cancels it between epochs, publishing nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import CollectorRegistry

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas.contracts import MODEL_NAMES
from driftline.schemas.messages import MODALITIES, DriftSignal
from driftline.schemas.topics import TRAINING_WINDOWS
from driftline.services.core.changepoint import Drop, find_drop
from driftline.services.core.triggers import (
    TRIGGER_DRIFT,
    TRIGGER_MANUAL,
    TriggerPolicy,
    TriggerState,
    decide,
)
from driftline.services.runtime import metrics as m
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import FsspecArtifactStore
from driftline.services.runtime.deadletters import describe, dlq_record
from driftline.services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from driftline.trainer.dataset import Example, TrainingBuffer
from driftline.trainer.fit import EpochReport
from driftline.trainer.inputs import decode_labelled
from driftline.trainer.metrics import TrainerMetrics
from driftline.trainer.publish import KafkaRegistryWriter
from driftline.trainer.runs import (
    OUTCOME_CANCELLED,
    OUTCOME_FAILED,
    OUTCOME_PROMOTED,
    OUTCOME_SKIPPED,
    RunOutcome,
    TrainingRun,
)
from driftline.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

BATCH = 500
STATUS_EVERY_S = 30.0
DETECT_EVERY_S = 2.0
# A drift signal that a drift-triggered run found harmless (the served model beat or matched
# its challenger on labelled examples newer than the signal) comes back while the served
# model's reference stays as it was, every window. It triggers again only for another served
# version, or once its score has grown by this factor: a deployment whose class mix differs
# from the training set's would otherwise retrain on every window, and lose every gate.
DRIFT_REARM_FACTOR = 1.5


@dataclass
class ModelState:
    """What the trainer knows about one model (one modality)."""

    modality: str
    name: str
    buffer: TrainingBuffer
    new_labels: int = 0
    last_run_ms: int | None = None
    last_failure_ms: int | None = None
    drift_pending: bool = False
    manual: bool = False
    # partition -> first offset not used by the last run (exclusive end of its lineage)
    trained_through: dict[int, int] = field(default_factory=dict)
    worker: threading.Thread | None = None
    outcome: RunOutcome | None = None
    labels_at_start: int = 0
    drift_at_start: bool = False
    # The newest drift signal taken (served version, score), the one the run in progress
    # started on, and the one a rejected drift run dismissed (see DRIFT_REARM_FACTOR).
    drift_signal: tuple[int, float] | None = None
    drift_signal_at_start: tuple[int, float] | None = None
    dismissed_drift: tuple[int, float] | None = None
    # The current regime (services.core.changepoint): where it started, whether no model
    # trained for it was promoted yet, its buffered examples now and at the last run.
    regime_start_ms: int | None = None
    regime_version: int | None = None  # the serving version whose outcomes showed the drop
    regime_id: int = 0  # counts regimes; a run belongs to the one current at its start
    regime_at_start: int = 0
    adapting: bool = False
    post_change: int = 0
    post_change_at_last_run: int = 0
    post_change_at_start: int = 0
    added_since_detect: int = 0
    last_detect: float = 0.0
    change_point_at_start: int | None = None
    superseded: bool = False  # set to cancel the run in progress (a newer change point)

    @property
    def running(self) -> bool:
        return self.worker is not None


def policy_of(settings: TrainerSettings) -> TriggerPolicy:
    return TriggerPolicy(
        min_new_labels=settings.min_new_labels,
        min_labels=settings.min_labels,
        min_drift_labels=settings.min_drift_labels,
        max_age_s=settings.max_age_s,
        retry_after_s=settings.retry_after_s,
        min_post_change_labels=settings.min_post_change_labels,
        regime_growth=settings.regime_growth,
    )


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
        topics = settings.kafka.topics
        self.source = topics.training_windows
        self.dlq_topic = topics.dlq(TRAINING_WINDOWS)
        self.signals_topic = topics.drift_signals
        self.states = {
            mod: ModelState(mod, MODEL_NAMES[mod], TrainingBuffer(settings.max_examples(mod)))
            for mod in MODALITIES
        }
        self.by_name = {s.name: s for s in self.states.values()}
        self.outcomes: list[RunOutcome] = []
        self.caught_up = threading.Event()
        self._manual_requests: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._producer: Producer | None = None
        self._committed: dict[int, int] = {}
        self._catchup: dict[int, int] = {}

    # -- requests from other threads -------------------------------------------------------

    def request_now(self, modality: str | None = None) -> None:
        """Train now (one modality, or every one), as soon as the training set allows."""
        with self._lock:
            self._manual_requests.update([modality] if modality else MODALITIES)

    # -- start-up: where to read from ------------------------------------------------------

    def _recover(self, snapshot: registry.RegistrySnapshot) -> dict[int, int]:
        """Per-model state from the registry; returns the start offset per known partition."""
        starts: dict[int, int] = {}
        complete = True
        for state in self.states.values():
            versions = sorted(
                snapshot.versions.get(state.name, {}).values(), key=lambda v: v.version
            )
            if versions:
                state.last_run_ms = versions[-1].created_time_ms
            trained = [v for v in versions if v.lineage.source == self.source]
            if not trained:
                complete = False
                continue
            last = trained[-1]
            state.trained_through = {r.partition: r.end_offset for r in last.lineage.ranges}
            if last.lineage.change_point_ms is not None:
                state.regime_start_ms = last.lineage.change_point_ms
                state.regime_version = last.lineage.parent_version
                state.regime_id = 1
                state.post_change_at_last_run = int(last.metrics.get("post_change_examples", 0))
                # A regime whose last version was not promoted is still waiting for its model.
                state.adapting = last.status != "champion"
            for r in last.lineage.ranges:
                starts[r.partition] = min(starts.get(r.partition, r.start_offset), r.start_offset)
            log.info(
                "%s: last trained as v%d on %s",
                state.name,
                last.version,
                ", ".join(
                    f"p{r.partition}[{r.start_offset},{r.end_offset})" for r in last.lineage.ranges
                ),
            )
        return starts if complete else {}

    def _assign(self, consumer: Consumer, snapshot: registry.RegistrySnapshot) -> None:
        timeout = self.settings.registry_timeout_s
        meta = consumer.list_topics(timeout=timeout)
        for topic in (self.source, self.signals_topic):
            if topic not in meta.topics or meta.topics[topic].error is not None:
                raise RuntimeError(f"topic {topic!r} not found; run `driftline topics create`")
        starts = self._recover(snapshot)
        parts = sorted(meta.topics[self.source].partitions)
        assigned: list[TopicPartition] = []
        committed = consumer.committed(
            [TopicPartition(self.source, p) for p in parts], timeout=timeout
        )
        for tp in committed:
            self._committed[tp.partition] = max(tp.offset, 0)
        for p in parts:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.source, p), timeout=timeout
            )
            first = max(starts[p], low) if p in starts else low
            assigned.append(
                TopicPartition(self.source, p, first if p in starts else OFFSET_BEGINNING)
            )
            if high > first:
                self._catchup[p] = high
        since = min((s.last_run_ms or 0 for s in self.states.values()), default=0)
        signal_parts = [
            TopicPartition(self.signals_topic, p, since)
            for p in sorted(meta.topics[self.signals_topic].partitions)
        ]
        # The first signal at or after the oldest last run (OFFSET_END when there is none).
        assigned.extend(consumer.offsets_for_times(signal_parts, timeout=timeout))
        consumer.assign(assigned)
        if not self._catchup:
            self.caught_up.set()
        log.info(
            "reading %s from %s; catching up to %s",
            self.source,
            {tp.partition: tp.offset for tp in assigned if tp.topic == self.source},
            self._catchup,
        )

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stop: Callable[[], bool], *, once: bool = False) -> list[RunOutcome]:
        """Consume and train until stop(); with once, train every requested model and return."""
        consumer = Consumer(
            self.settings.kafka.client_config(
                **{
                    "group.id": self.settings.group_id,
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                    "max.partition.fetch.bytes": 8 * 1024 * 1024,
                }
            )
        )
        self._producer = producer(self.settings.kafka)
        last_status = time.monotonic()
        try:
            snapshot = registry.read_snapshot(
                self.settings.kafka,
                self.settings.kafka.topics.models_registry,
                timeout_s=self.settings.registry_timeout_s,
            )
            self._assign(consumer, snapshot)
            while not stop():
                if self.health is not None:
                    self.health.tick()
                msgs = consumer.consume(BATCH, timeout=self.settings.poll_timeout_s)
                if msgs:
                    self._process(consumer, msgs)
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
            self._producer.flush(10)
        return self.outcomes

    def _idle(self) -> bool:
        with self._lock:
            pending = bool(self._manual_requests)
        return not pending and not any(s.manual or s.running for s in self.states.values())

    def _process(self, consumer: Consumer, msgs: list[Message]) -> None:
        letters: list[tuple[Message, dl.CodecError]] = []
        advanced: dict[int, int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.topic() == self.source:
                        self._catchup.pop(msg.partition() or 0, None)
                else:
                    log.warning("consumer error: %s", err)
                continue
            if msg.topic() == self.signals_topic:
                self._on_signal(msg)
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            target = self._catchup.get(partition)
            if target is not None and offset + 1 >= target:
                del self._catchup[partition]
            self.metrics.consumed.labels(self.source).inc()
            try:
                example = decode_labelled(msg.value(), codec.content_type_of(msg.headers()))
            except dl.CodecError as exc:
                if offset >= self._committed.get(partition, 0):
                    letters.append((msg, exc))
            else:
                state = self.states[example.modality]
                served = example.served_version
                state.buffer.add(
                    Example(
                        example.event_time_ms,
                        partition,
                        offset,
                        example.label,
                        example.x,
                        served_version=served if served is not None else -1,
                        served_correct=bool(example.served_correct),
                    )
                )
                state.added_since_detect += 1
                if offset >= state.trained_through.get(partition, 0):
                    state.new_labels += 1
            advanced[partition] = max(advanced.get(partition, -1), offset + 1)
        if letters:
            self._dead_letter(letters)
        # Dead letters of these offsets are acknowledged: record how far dead-lettering got.
        commits = [
            TopicPartition(self.source, p, o)
            for p, o in advanced.items()
            if o > self._committed.get(p, 0)
        ]
        if commits:
            consumer.commit(offsets=commits, asynchronous=False)
            for tp in commits:
                self._committed[tp.partition] = tp.offset
        if not self._catchup and not self.caught_up.is_set():
            self.caught_up.set()
            log.info("caught up: %s", self._buffer_text())

    def _dead_letter(self, letters: list[tuple[Message, dl.CodecError]]) -> None:
        assert self._producer is not None
        tracker = DeliveryTracker()
        for msg, exc in letters:
            rec = dlq_record(msg, exc, self.settings.service_name)
            self._producer.produce(
                self.dlq_topic,
                key=rec.key,
                value=rec.value,
                headers=rec.headers,
                on_delivery=tracker,
            )
            self.metrics.dead_letters.labels(self.source, exc.error_class).inc()
            log.warning(describe(rec.envelope))
        flush_or_raise(self._producer, tracker)

    def _on_signal(self, msg: Message) -> None:
        try:
            signal = codec.decode(DriftSignal, msg.value(), codec.content_type_of(msg.headers()))
        except dl.CodecError as exc:
            log.warning("ignoring an undecodable drift signal: %s", exc)
            return
        state = self.by_name.get(signal.model_name)
        if state is None or not signal.drifted:
            return
        if state.last_run_ms is not None and signal.window_end_ms <= state.last_run_ms:
            return  # about data the last run already saw
        if state.regime_start_ms is not None and signal.window_start_ms < state.regime_start_ms:
            # The window straddles the change point the trainer already acts on: it says the
            # world changed, which is known, and the regime's own triggers follow the new one.
            return
        dismissed = state.dismissed_drift
        if (
            dismissed is not None
            and signal.model_version == dismissed[0]
            and signal.score < DRIFT_REARM_FACTOR * dismissed[1]
        ):
            return  # what a drift run already found harmless (logged when it was dismissed)
        state.drift_signal = (signal.model_version, signal.score)
        if not state.drift_pending:
            log.info(
                "%s: drift signal (%s %.3f > %.3f on v%d)",
                state.name,
                signal.statistic,
                signal.score,
                signal.threshold,
                signal.model_version,
            )
        state.drift_pending = True

    # -- trainings ---------------------------------------------------------------------------

    def _maybe_train(self) -> None:
        with self._lock:
            requested, self._manual_requests = self._manual_requests, set()
        for mod in requested:
            self.states[mod].manual = True
        now_ms = int(time.time() * 1000)
        for state in self.states.values():
            if self.caught_up.is_set():
                self._watch_outcomes(state)
            reason = decide(self.policy, self._trigger_state(state), now_ms)
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

    def _watch_outcomes(self, state: ModelState) -> None:
        """Look for a drop in the serving version's accuracy; keep the regime's count current."""
        if not state.added_since_detect:
            return
        now = time.monotonic()
        if now - state.last_detect < DETECT_EVERY_S:
            return
        state.last_detect = now
        state.added_since_detect = 0
        out = state.buffer.outcomes()
        times = out.event_time_ms
        served = out.served_version >= 0
        if served.any():
            newest = out.served_version[served][int(np.argmax(times[served]))]
            mask = served & (out.served_version == newest)
            if state.regime_start_ms is not None:
                mask &= times >= state.regime_start_ms
            s = self.settings
            drop = find_drop(
                times[mask],
                out.served_correct[mask],
                min_segment=s.change_min_segment,
                min_drop=s.change_min_drop,
            )
            if drop is not None and (
                state.regime_start_ms is None or drop.at_ms > state.regime_start_ms
            ):
                self._on_drop(state, int(newest), drop)
        if state.regime_start_ms is not None:
            state.post_change = int((times >= state.regime_start_ms).sum())
            self.metrics.post_change_examples.labels(state.modality).set(state.post_change)

    def _on_drop(self, state: ModelState, version: int, drop: Drop) -> None:
        """A new change point, or a better estimate of the current one.

        The first estimate comes with few outcomes after the change and may sit a little early;
        a later drop found in the outcomes of the same serving version, after that estimate,
        is the same change seen better: the regime's start moves, and a run already training
        for the regime goes on. A drop in a newer version's outcomes is a new change.
        """
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(drop.at_ms / 1000))
        refined = state.regime_start_ms is not None and state.regime_version == version
        log.info(
            "%s: v%d accuracy fell from %.3f to %.3f at event time %s "
            "(%d and %d labelled outcomes, 2LLR %.0f): %s",
            state.name,
            version,
            drop.before,
            drop.after,
            when,
            drop.n_before,
            drop.n_after,
            drop.llr,
            "the change point is later than first estimated"
            if refined
            else "learning the new world from there",
        )
        if not refined:
            if state.running and state.change_point_at_start != drop.at_ms:
                # The run in progress learns and is judged on the old world: stop it between
                # two epochs, and start one for the new world instead.
                state.superseded = True
                log.info("%s: cancelling the run in progress, superseded", state.name)
            state.adapting = True
            state.post_change_at_last_run = 0
            state.dismissed_drift = None
            state.regime_version = version
            state.regime_id += 1
        state.regime_start_ms = drop.at_ms
        self.metrics.change_point.labels(state.modality).set(drop.at_ms / 1000)

    def _trigger_state(self, state: ModelState) -> TriggerState:
        return TriggerState(
            buffered=len(state.buffer),
            new_labels=state.new_labels,
            last_run_ms=state.last_run_ms,
            drift_pending=state.drift_pending,
            manual=state.manual,
            running=state.running,
            caught_up=self.caught_up.is_set(),
            last_failure_ms=state.last_failure_ms,
            post_change=state.post_change,
            post_change_at_last_run=state.post_change_at_last_run,
            adapting=state.adapting,
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
                source=self.source,
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
            now_ms = int(time.time() * 1000)
            if outcome.version is not None:
                state.new_labels = max(0, state.new_labels - state.labels_at_start)
                state.last_run_ms = outcome.version.created_time_ms
                state.last_failure_ms = None
                state.trained_through = {
                    r.partition: r.end_offset for r in outcome.version.lineage.ranges
                }
                self._fold_drift(state, outcome)
                cp = outcome.version.lineage.change_point_ms
                if cp is not None and state.regime_at_start == state.regime_id:  # this regime
                    state.post_change_at_last_run = max(1, state.post_change_at_start)
                    if outcome.outcome == OUTCOME_PROMOTED:
                        state.adapting = False
            elif state.superseded:
                state.superseded = False  # stopped for a newer change point: not a failure
                state.drift_pending = state.drift_pending or state.drift_at_start
            else:
                state.last_failure_ms = now_ms
                state.drift_pending = state.drift_pending or state.drift_at_start
            self._record(outcome)

    def _fold_drift(self, state: ModelState, outcome: RunOutcome) -> None:
        """After a published run: a drift run whose challenger lost dismisses its signal."""
        if outcome.outcome == OUTCOME_PROMOTED:
            state.dismissed_drift = None  # a new version, a new reference to drift from
            return
        signal = state.drift_signal_at_start
        if outcome.trigger != TRIGGER_DRIFT or signal is None:
            return
        state.dismissed_drift = signal
        log.info(
            "%s: v%d held its ground on labelled data after the drift signal (%.3f); "
            "signals on v%d trigger again from %.3f",
            state.name,
            signal[0],
            signal[1],
            signal[0],
            DRIFT_REARM_FACTOR * signal[1],
        )

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

    def _buffer_text(self) -> str:
        return ", ".join(
            f"{s.modality} {len(s.buffer)} buffered / {s.new_labels} new"
            for s in self.states.values()
        )

    def _log_status(self) -> None:
        running = [s.name for s in self.states.values() if s.running]
        log.info("%s%s", self._buffer_text(), f"; training {', '.join(running)}" if running else "")


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
