"""The label-join decision: emit, duplicate, unknown, expired; and what is kept per event."""

from __future__ import annotations

from schemas.messages import Label
from services.core.join import (
    Decision,
    EventState,
    Prediction,
    StoredInput,
    decide,
    decode_input,
    decode_state,
    encode,
    evictable,
    labelled,
    served_first,
    with_prediction,
)

HOUR = 3_600_000
INPUT = StoredInput("e1", "a1", "sensor", 1_000, "SensorWindow", b"\x02avro-bytes")
P1 = Prediction("insulator-sensor", 1, "healthy", 0.9, scored_time_ms=1_100)
P2 = Prediction("insulator-sensor", 2, "cracked", 0.7, scored_time_ms=1_200)


def _label(true_class: str = "healthy", at: int = 5_000) -> Label:
    return Label(event_id="e1", true_class=true_class, source="inspection", label_time_ms=at)


def test_a_label_for_a_known_event_emits_the_input_and_the_prediction_served() -> None:
    state = with_prediction(None, "e1", "a1", 1_000, P1)
    assert decide(INPUT, state, _label(), HOUR) is Decision.EMIT
    marked, window = labelled(state, INPUT, _label())
    assert window.input == INPUT.data
    assert window.input_type == "SensorWindow"
    assert (window.predicted_class, window.model_version, window.confidence) == ("healthy", 1, 0.9)
    assert (window.true_class, window.label_time_ms, window.event_time_ms) == (
        "healthy",
        5_000,
        1_000,
    )
    assert marked.labelled_class == "healthy"
    assert decide(INPUT, marked, _label(), HOUR) is Decision.DUPLICATE


def test_a_second_label_is_a_duplicate_whatever_its_class() -> None:
    marked, _ = labelled(None, INPUT, _label())
    assert decide(INPUT, marked, _label("cracked"), HOUR) is Decision.DUPLICATE


def test_a_label_without_a_prediction_still_emits_the_input() -> None:
    marked, window = labelled(None, INPUT, _label())
    assert window.predicted_class is None
    assert window.model_version is None
    assert marked.prediction is None


def test_unknown_and_expired_events() -> None:
    assert decide(None, None, _label(), HOUR) is Decision.UNKNOWN
    state = with_prediction(None, "e1", "a1", 1_000, P1)
    assert decide(None, state, _label(), HOUR) is Decision.UNKNOWN  # a result without its input
    assert decide(INPUT, state, _label(at=1_000 + HOUR + 1), HOUR) is Decision.EXPIRED
    assert decide(INPUT, state, _label(at=1_000 + HOUR), HOUR) is Decision.EMIT


def test_the_prediction_served_first_is_kept() -> None:
    assert served_first(None, P2) is P2
    assert served_first(P1, P2) is P1
    assert served_first(P2, P1) is P1
    labelled_state, _ = labelled(None, INPUT, _label())
    later = with_prediction(labelled_state, "e1", "a1", 1_000, P1)
    assert later.labelled_class == "healthy"
    assert later.prediction == P1


def test_entries_round_trip_and_expire_by_event_time() -> None:
    state = EventState("e1", "a1", 1_000, prediction=P1)
    assert decode_state(encode(state)) == state
    assert decode_input(encode(INPUT)) == INPUT
    assert evictable(1_000, watermark_ms=1_000 + HOUR + 1, keep_ms=HOUR)
    assert not evictable(1_000, watermark_ms=1_000 + HOUR, keep_ms=HOUR)


def test_a_label_waits_for_its_input_and_prediction_until_the_inputs_pass_it() -> None:
    label = _label(at=5_000)
    assert decide(None, None, label, HOUR, watermark_ms=4_000, wait_ms=1_000) is Decision.WAIT
    assert decide(None, None, label, HOUR, watermark_ms=6_000, wait_ms=1_000) is Decision.WAIT
    assert decide(None, None, label, HOUR, watermark_ms=6_001, wait_ms=1_000) is Decision.UNKNOWN
    # The input is there but not the prediction: wait for it, then emit without it.
    assert decide(INPUT, None, label, HOUR, watermark_ms=4_000, wait_ms=1_000) is Decision.WAIT
    assert decide(INPUT, None, label, HOUR, watermark_ms=7_000, wait_ms=1_000) is Decision.EMIT
    state = with_prediction(None, "e1", "a1", 1_000, P1)
    assert decide(INPUT, state, label, HOUR, watermark_ms=0, wait_ms=1_000) is Decision.EMIT
