"""What the trainer knows about each model, and how drift signals, drops and runs change it.

Drift-aware retraining. Every labelled window says whether the prediction served then was
right. At most every DETECT_EVERY_S the trainer scans the outcomes of the model version that
serves the newest examples, in event-time order, for a significant drop (services.core.
changepoint). A drop starts a regime at its event time: the next run waits for enough examples
from after it, trains with them dominating and gates both models on a holdout drawn from after
it; later runs keep that weighting and come each time the new world's examples have doubled.
The change point is recorded in each version's lineage, so a restarted trainer resumes the
regime from the registry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from driftline.schemas.messages import DriftSignal
from driftline.services.core.changepoint import Drop, find_drop
from driftline.services.core.triggers import TRIGGER_DRIFT, TriggerPolicy, TriggerState
from driftline.trainer.dataset import TrainingBuffer
from driftline.trainer.metrics import TrainerMetrics
from driftline.trainer.runs import OUTCOME_PROMOTED, RunOutcome
from driftline.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

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


def trigger_state(state: ModelState, caught_up: bool) -> TriggerState:
    """What the trigger rules (services.core.triggers) look at for one model."""
    return TriggerState(
        buffered=len(state.buffer),
        new_labels=state.new_labels,
        last_run_ms=state.last_run_ms,
        drift_pending=state.drift_pending,
        manual=state.manual,
        running=state.running,
        caught_up=caught_up,
        last_failure_ms=state.last_failure_ms,
        post_change=state.post_change,
        post_change_at_last_run=state.post_change_at_last_run,
        adapting=state.adapting,
    )


def buffer_text(states: Iterable[ModelState]) -> str:
    return ", ".join(f"{s.modality} {len(s.buffer)} buffered / {s.new_labels} new" for s in states)


def take_signal(state: ModelState, signal: DriftSignal) -> None:
    """Note a drift signal about this model, unless it says nothing a run does not know."""
    if not signal.drifted:
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


def watch_outcomes(state: ModelState, settings: TrainerSettings, metrics: TrainerMetrics) -> None:
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
        drop = find_drop(
            times[mask],
            out.served_correct[mask],
            min_segment=settings.change_min_segment,
            min_drop=settings.change_min_drop,
        )
        if drop is not None and (
            state.regime_start_ms is None or drop.at_ms > state.regime_start_ms
        ):
            on_drop(state, int(newest), drop, metrics)
    if state.regime_start_ms is not None:
        state.post_change = int((times >= state.regime_start_ms).sum())
        metrics.post_change_examples.labels(state.modality).set(state.post_change)


def on_drop(state: ModelState, version: int, drop: Drop, metrics: TrainerMetrics) -> None:
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
    metrics.change_point.labels(state.modality).set(drop.at_ms / 1000)


def fold_outcome(state: ModelState, outcome: RunOutcome, now_ms: int) -> None:
    """Fold the outcome of a finished run into its model's state."""
    if outcome.version is not None:
        state.new_labels = max(0, state.new_labels - state.labels_at_start)
        state.last_run_ms = outcome.version.created_time_ms
        state.last_failure_ms = None
        state.trained_through = {r.partition: r.end_offset for r in outcome.version.lineage.ranges}
        _fold_drift(state, outcome)
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


def _fold_drift(state: ModelState, outcome: RunOutcome) -> None:
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
