"""The label-join decision: emit, duplicate, unknown, expired, wait; per event and per asset."""

from __future__ import annotations

from driftline.schemas.messages import Label
from driftline.services.core.join import (
    Decision,
    EventState,
    InputRef,
    Prediction,
    decide,
    decide_inspection,
    decode_state,
    encode,
    evictable,
    label_problem,
    labelled_window,
    marked,
    served_first,
    with_input,
    with_prediction,
)

HOUR = 3_600_000
REF = InputRef("sensor.windows", 2, 41, "SensorWindow", "sensor")
P1 = Prediction("insulator-sensor", 1, "healthy", 0.9, scored_time_ms=1_100)
P2 = Prediction("insulator-sensor", 2, "cracked", 0.7, scored_time_ms=1_200)
DATA = b"\x02avro-bytes"


def _label(true_class: str = "healthy", at: int = 5_000) -> Label:
    return Label(
        event_id="e1", asset_id="a1", true_class=true_class, source="inspection", label_time_ms=at
    )


def _inspection(at: int, lookback: int, true_class: str = "cracked") -> Label:
    return Label(
        asset_id="a1", true_class=true_class, source="inspection", label_time_ms=at,
        lookback_ms=lookback,
    )  # fmt: skip


def _known(t: int = 1_000, p: Prediction | None = P1) -> EventState:
    state = with_input(None, "e1", "a1", t, REF)
    return with_prediction(state, "e1", "a1", t, p) if p is not None else state


def test_a_label_for_a_known_event_emits_the_input_and_the_prediction_served() -> None:
    state = _known()
    assert decide(state, _label(), HOUR) is Decision.EMIT
    window = labelled_window(state, DATA, _label())
    assert window.input == DATA
    assert window.input_type == "SensorWindow"
    assert (window.predicted_class, window.model_version, window.confidence) == ("healthy", 1, 0.9)
    assert (window.true_class, window.label_time_ms, window.event_time_ms) == (
        "healthy",
        5_000,
        1_000,
    )
    done = marked(state, _label())
    assert done.labelled_class == "healthy"
    assert decide(done, _label(), HOUR) is Decision.DUPLICATE


def test_a_second_label_is_a_duplicate_whatever_its_class() -> None:
    done = marked(_known(), _label())
    assert decide(done, _label("cracked"), HOUR) is Decision.DUPLICATE


def test_a_label_without_a_prediction_still_emits_the_input() -> None:
    state = _known(p=None)
    assert decide(state, _label(), HOUR) is Decision.EMIT
    window = labelled_window(state, DATA, _label())
    assert window.predicted_class is None
    assert window.model_version is None


def test_unknown_and_expired_events() -> None:
    assert decide(None, _label(), HOUR) is Decision.UNKNOWN
    result_only = with_prediction(None, "e1", "a1", 1_000, P1)
    assert decide(result_only, _label(), HOUR) is Decision.UNKNOWN  # a result without its input
    assert decide(_known(), _label(at=1_000 + HOUR + 1), HOUR) is Decision.EXPIRED
    assert decide(_known(), _label(at=1_000 + HOUR), HOUR) is Decision.EMIT


def test_the_prediction_and_the_input_position_seen_first_are_kept() -> None:
    assert served_first(None, P2) is P2
    assert served_first(P1, P2) is P1
    assert served_first(P2, P1) is P1
    done = marked(_known(), _label())
    later = with_prediction(done, "e1", "a1", 1_000, P2)
    assert later.labelled_class == "healthy"
    assert later.prediction == P1
    replayed = InputRef("sensor.windows", 2, 99, "SensorWindow", "sensor")
    assert with_input(done, "e1", "a1", 1_000, replayed).ref == REF


def test_entries_round_trip_and_expire_by_event_time() -> None:
    state = marked(_known(), _label())
    assert decode_state(encode(state)) == state
    assert evictable(1_000, watermark_ms=1_000 + HOUR + 1, keep_ms=HOUR)
    assert not evictable(1_000, watermark_ms=1_000 + HOUR, keep_ms=HOUR)


def test_a_label_waits_for_its_input_and_prediction_until_the_inputs_pass_it() -> None:
    label = _label(at=5_000)
    assert decide(None, label, HOUR, watermark_ms=4_000, wait_ms=1_000) is Decision.WAIT
    assert decide(None, label, HOUR, watermark_ms=6_000, wait_ms=1_000) is Decision.WAIT
    assert decide(None, label, HOUR, watermark_ms=6_001, wait_ms=1_000) is Decision.UNKNOWN
    # The input is there but not the prediction: wait for it, then emit without it.
    no_prediction = _known(p=None)
    assert decide(no_prediction, label, HOUR, watermark_ms=4_000, wait_ms=1_000) is Decision.WAIT
    assert decide(no_prediction, label, HOUR, watermark_ms=7_000, wait_ms=1_000) is Decision.EMIT
    assert decide(_known(), label, HOUR, watermark_ms=0, wait_ms=1_000) is Decision.EMIT


def _event(i: int, t: int, *, ref: bool = True) -> EventState:
    state = with_prediction(None, f"e{i}", "a1", t, P1)
    return with_input(state, f"e{i}", "a1", t, REF) if ref else state


def test_an_inspection_labels_the_open_events_of_its_interval_once() -> None:
    label = _inspection(at=10_000, lookback=5_000)
    assert label.interval() == (5_000, 10_000)
    events = [(_event(1, 5_000), False), (_event(2, 7_000), True), (_event(3, 10_000), False)]
    # It waits until the inputs have passed it: any event of the interval may be on its way.
    assert decide_inspection(events, label, HOUR, watermark_ms=10_500, wait_ms=1_000) == (
        Decision.WAIT,
        [],
    )
    # Event 2 was labelled before (a per-event label or an earlier inspection): it wins.
    assert decide_inspection(events, label, HOUR) == (Decision.EMIT, [0, 2])
    done = [(e, True) for e, _ in events]
    assert decide_inspection(done, label, HOUR) == (Decision.DUPLICATE, [])


def test_an_inspection_without_events_is_unknown_or_expired() -> None:
    label = _inspection(at=10_000, lookback=5_000)
    assert decide_inspection([], label, HOUR) == (Decision.UNKNOWN, [])
    assert decide_inspection([(_event(1, 6_000, ref=False), False)], label, HOUR) == (
        Decision.UNKNOWN,
        [],
    )
    late = _inspection(at=10_000 + HOUR + 1, lookback=HOUR + 1)
    assert decide_inspection([(_event(1, 9_000), False)], late, HOUR) == (Decision.EXPIRED, [])
    old = Label(
        asset_id="a1", true_class="cracked", source="s", label_time_ms=3 * HOUR,
        inspection_time_ms=HOUR, lookback_ms=1_000,
    )  # fmt: skip
    assert decide_inspection([], old, HOUR) == (Decision.EXPIRED, [])


def test_labels_that_cannot_be_routed_or_are_malformed_say_why() -> None:
    assert label_problem(_label()) is None
    assert label_problem(_inspection(at=1, lookback=1)) is None
    no_asset = Label(event_id="e1", true_class="healthy", source="s", label_time_ms=1)
    assert label_problem(no_asset) == (
        "a per-event label needs asset_id: the join is partitioned by asset"
    )
    no_lookback = Label(asset_id="a1", true_class="healthy", source="s", label_time_ms=1)
    assert label_problem(no_lookback) == "an asset inspection needs lookback_ms >= 0"


def test_a_label_counts_for_live_accuracy_only_if_joined_to_a_prediction() -> None:
    assert marked(_known(), _label()).counts_label
    late = marked(_known(p=None), _label())  # emitted without a prediction ...
    assert not with_prediction(late, "e1", "a1", 1_000, P1).counts_label  # ... stays uncounted
    assert not _known().counts_label  # not labelled
    # A state written before label_counted existed (7 fields): counted if it has a prediction.
    import msgspec

    old = msgspec.msgpack.encode(["e1", "a1", 1_000, P1, "healthy", 5_000, REF])
    assert decode_state(old).label_counted is None
    assert decode_state(old).counts_label
    older = msgspec.msgpack.encode(["e1", "a1", 1_000, None, "healthy", 5_000, REF])
    assert not decode_state(older).counts_label
