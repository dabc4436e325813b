"""When the trainer retrains: new labels, drift, age or a request; never twice at once."""

from __future__ import annotations

from driftline.services.core.triggers import (
    TRIGGER_DRIFT,
    TRIGGER_MANUAL,
    TRIGGER_MAX_AGE,
    TRIGGER_NEW_LABELS,
    TriggerPolicy,
    TriggerState,
    decide,
)

POLICY = TriggerPolicy(
    min_new_labels=100, min_labels=50, min_drift_labels=10, max_age_s=3600, retry_after_s=60
)
NOW = 10_000_000


def state(**kw: object) -> TriggerState:
    base: dict[str, object] = {"buffered": 500, "new_labels": 0, "last_run_ms": NOW - 1000}
    base.update(kw)
    return TriggerState(**base)  # type: ignore[arg-type]


def test_enough_new_labels_trigger_a_training() -> None:
    assert decide(POLICY, state(new_labels=99), NOW) is None
    assert decide(POLICY, state(new_labels=100), NOW) == TRIGGER_NEW_LABELS


def test_drift_triggers_once_some_new_labels_arrived() -> None:
    assert decide(POLICY, state(drift_pending=True, new_labels=9), NOW) is None
    assert decide(POLICY, state(drift_pending=True, new_labels=10), NOW) == TRIGGER_DRIFT


def test_an_old_model_is_retrained_when_anything_new_arrived() -> None:
    old = NOW - 3600 * 1000
    assert decide(POLICY, state(last_run_ms=old, new_labels=0), NOW) is None
    assert decide(POLICY, state(last_run_ms=old, new_labels=1), NOW) == TRIGGER_MAX_AGE
    assert decide(POLICY, state(last_run_ms=None, new_labels=1), NOW) == TRIGGER_MAX_AGE
    no_age = TriggerPolicy(max_age_s=None)
    assert decide(no_age, state(last_run_ms=None, new_labels=1, buffered=500), NOW) is None


def test_a_manual_request_trains_now_even_right_after_a_failure() -> None:
    failed = state(manual=True, last_failure_ms=NOW - 1)
    assert decide(POLICY, failed, NOW) == TRIGGER_MANUAL


def test_nothing_starts_while_running_catching_up_short_of_data_or_backing_off() -> None:
    ready = {"new_labels": 1000, "manual": True}
    assert decide(POLICY, state(running=True, **ready), NOW) is None
    assert decide(POLICY, state(caught_up=False, **ready), NOW) is None
    assert decide(POLICY, state(buffered=49, **ready), NOW) is None
    backing_off = state(new_labels=1000, last_failure_ms=NOW - 59_000)
    assert decide(POLICY, backing_off, NOW) is None
    assert decide(POLICY, state(new_labels=1000, last_failure_ms=NOW - 60_000), NOW) is not None
