"""When to retrain: a pure decision over what the trainer has buffered and when it last ran.

A training starts for one of six reasons: the served model's accuracy dropped at a change
point and enough labelled examples from after it have arrived to learn and judge the new world
(`change_point`); the examples of that new world have grown by a factor since the last run, so
early retrains come quickly and later ones ever more rarely (`new_regime`); enough new labels
since the last run; a drift signal for the model (once some new labels arrived); the model
being older than the maximum age (with at least one new label, since retraining on the same
data is pointless); or an operator asking for it now. While a change point waits for its
examples, no other automatic trigger fires: a model trained then would learn mostly the old
world. Nothing starts while a run of the same model is in progress, while the trainer is still
re-reading its history after a restart, with fewer labels than a training set needs, or
(except when asked by hand) shortly after a failure.
"""

from __future__ import annotations

from dataclasses import dataclass

TRIGGER_MANUAL = "manual"
TRIGGER_DRIFT = "drift"
TRIGGER_NEW_LABELS = "new_labels"
TRIGGER_MAX_AGE = "max_age"
TRIGGER_CHANGE_POINT = "change_point"
TRIGGER_NEW_REGIME = "new_regime"
TRIGGERS = (
    TRIGGER_MANUAL,
    TRIGGER_CHANGE_POINT,
    TRIGGER_NEW_REGIME,
    TRIGGER_DRIFT,
    TRIGGER_NEW_LABELS,
    TRIGGER_MAX_AGE,
)


@dataclass(frozen=True)
class TriggerPolicy:
    """The configured thresholds (TrainerSettings carries them)."""

    min_new_labels: int = 500
    min_labels: int = 200
    min_drift_labels: int = 200
    max_age_s: float | None = 24 * 3600.0
    retry_after_s: float = 300.0
    min_post_change_labels: int = 200
    regime_growth: float = 2.0


@dataclass(frozen=True)
class TriggerState:
    """What one model's trainer knows right now."""

    buffered: int
    new_labels: int
    last_run_ms: int | None = None
    drift_pending: bool = False
    manual: bool = False
    running: bool = False
    caught_up: bool = True
    last_failure_ms: int | None = None
    # Since the last change point: examples buffered from after it, how many the last run of
    # this regime had (0: none yet), and whether no model trained for it has been promoted.
    post_change: int = 0
    post_change_at_last_run: int = 0
    adapting: bool = False


def decide(policy: TriggerPolicy, state: TriggerState, now_ms: int) -> str | None:
    """The reason to start a training now (one of TRIGGERS), or None to wait."""
    if state.running or not state.caught_up or state.buffered < policy.min_labels:
        return None
    if state.manual:
        return TRIGGER_MANUAL
    if (
        state.last_failure_ms is not None
        and now_ms - state.last_failure_ms < policy.retry_after_s * 1000
    ):
        return None
    if state.adapting and state.post_change_at_last_run == 0:
        enough = state.post_change >= policy.min_post_change_labels
        return TRIGGER_CHANGE_POINT if enough else None
    if (
        state.post_change_at_last_run > 0
        and state.post_change >= policy.regime_growth * state.post_change_at_last_run
    ):
        return TRIGGER_NEW_REGIME
    if state.adapting:
        return None  # the last try for the new world was not promoted: wait for more of it
    if state.drift_pending and state.new_labels >= policy.min_drift_labels:
        return TRIGGER_DRIFT
    if state.new_labels >= policy.min_new_labels:
        return TRIGGER_NEW_LABELS
    too_old = state.last_run_ms is None or (
        policy.max_age_s is not None and now_ms - state.last_run_ms >= policy.max_age_s * 1000
    )
    if policy.max_age_s is not None and state.new_labels > 0 and too_old:
        return TRIGGER_MAX_AGE
    return None
