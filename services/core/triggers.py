"""When to retrain: a pure decision over what the trainer has buffered and when it last ran.

A training starts for one of four reasons: enough new labels since the last run, a drift
signal for the model (once some new labels arrived to learn the new world from), the model
being older than the maximum age (with at least one new label, since retraining on the same
data is pointless), or an operator asking for it now. Nothing starts while a run of the same
model is in progress, while the trainer is still re-reading its history after a restart, with
fewer labels than a training set needs, or (except when asked by hand) shortly after a failure.
"""

from __future__ import annotations

from dataclasses import dataclass

TRIGGER_MANUAL = "manual"
TRIGGER_DRIFT = "drift"
TRIGGER_NEW_LABELS = "new_labels"
TRIGGER_MAX_AGE = "max_age"
TRIGGERS = (TRIGGER_MANUAL, TRIGGER_DRIFT, TRIGGER_NEW_LABELS, TRIGGER_MAX_AGE)


@dataclass(frozen=True)
class TriggerPolicy:
    """The configured thresholds (TrainerSettings carries them)."""

    min_new_labels: int = 500
    min_labels: int = 200
    min_drift_labels: int = 50
    max_age_s: float | None = 24 * 3600.0
    retry_after_s: float = 300.0


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
