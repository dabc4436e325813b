"""Live accuracy by event time: per bucket, with coverage, delay and a confidence estimate."""

from __future__ import annotations

import random

import numpy as np
import pytest

from driftline.services.core.accuracy import (
    DELAY_EDGES_S,
    BucketCounts,
    EventTimeAccuracy,
    calibration_factor,
    decode,
    delay_bin,
    encode,
    merge,
    snapshot,
)

SEC = 1000
BUCKET = 10 * SEC
HORIZON = 600 * SEC
T0 = 1_700_000_000_000


def _events(n: int, seed: int) -> dict[str, np.ndarray]:
    """Scored events with confidences; a random subset labelled after a random delay."""
    rng = np.random.default_rng(seed)
    return {
        "t": T0 + np.sort(rng.integers(0, 300 * SEC, n)),
        "conf": rng.uniform(0.3, 1.0, n),
        "labelled": rng.random(n) < 0.4,
        "delay": rng.integers(0, 90 * SEC, n),
        "correct": rng.random(n) < 0.8,
    }


def _fold(state: EventTimeAccuracy, ev: dict[str, np.ndarray], idx: list[int]) -> None:
    for i in idx:
        t = int(ev["t"][i])
        state.scored(t, float(ev["conf"][i]))
        if ev["labelled"][i]:
            state.labelled(t, t + int(ev["delay"][i]), bool(ev["correct"][i]))
    state.expire()


def test_buckets_match_a_numpy_oracle_of_coverage_delay_and_accuracy() -> None:
    ev = _events(3000, seed=1)
    state = EventTimeAccuracy(BUCKET, HORIZON)
    order = list(range(3000))
    random.Random(2).shuffle(order)  # arrival order does not matter
    _fold(state, ev, order)
    starts = ev["t"] - ev["t"] % BUCKET
    assert sorted(state.buckets) == sorted(set(starts.tolist()))
    for start, c in state.buckets.items():
        mine = starts == start
        lab = mine & ev["labelled"]
        assert c.scored == mine.sum()
        assert c.labelled == lab.sum()
        assert c.correct == (lab & ev["correct"]).sum()
        assert c.coverage == pytest.approx(lab.sum() / mine.sum())
        assert c.confidence_mean == pytest.approx(ev["conf"][mine].mean(), abs=1e-6)
        assert c.delay_mean_ms == pytest.approx(ev["delay"][lab].mean())
        assert c.delay_max_ms == ev["delay"][lab].max()
        edges_ms = np.array(DELAY_EDGES_S) * SEC
        bins = np.searchsorted(edges_ms, ev["delay"][lab], side="left")
        assert c.delay_counts == np.bincount(bins, minlength=len(DELAY_EDGES_S) + 1).tolist()


def test_a_backlog_of_labels_for_old_events_leaves_the_newest_bucket_alone() -> None:
    state = EventTimeAccuracy(BUCKET, HORIZON)
    now = T0 + 300 * SEC
    for i in range(100):  # the present: 100 events, 40 labelled, a quarter of them right
        t = now + i * 50
        state.scored(t, 0.9)
        if i < 40:
            state.labelled(t, t + 3 * SEC, i % 4 == 0)
    before = snapshot(state.buckets, BUCKET, min_labels=30)
    assert before is not None
    assert before.enough
    assert (before.start_ms, before.correct, before.total) == (now - now % BUCKET, 10, 40)
    for i in range(5000):  # a backlog: labels, all right, for events minutes old
        t = T0 + (i % 200) * SEC
        state.scored(t, 0.9)
        state.labelled(t, now + 60 * SEC, True)
    after = snapshot(state.buckets, BUCKET, min_labels=30)
    assert after == before
    assert after is not None
    assert after.accuracy == pytest.approx(0.25)
    # and the whole book, counted by label time, would have shown almost 1.0
    every = merge([state.buckets])
    assert sum(c.correct for c in every.values()) / sum(c.labelled for c in every.values()) > 0.99


def test_the_newest_bucket_with_enough_labels_is_shown_and_the_estimate_is_the_newest() -> None:
    state = EventTimeAccuracy(BUCKET, HORIZON)
    for i in range(40):
        state.scored(T0 + i, 0.8)
        state.labelled(T0 + i, T0 + 5 * SEC, i < 30)
    state.scored(T0 + BUCKET, 0.6)  # newer: scored, labelled once only
    state.labelled(T0 + BUCKET, T0 + BUCKET + SEC, True)
    snap = snapshot(state.buckets, BUCKET, min_labels=30)
    assert snap is not None
    assert (snap.start_ms, snap.total, snap.enough) == (T0 - T0 % BUCKET, 40, True)
    assert snap.coverage == 1.0
    assert snap.delay_mean_ms == pytest.approx(np.mean([5 * SEC - i for i in range(40)]))
    assert snap.estimate == pytest.approx(0.6)
    assert snap.estimate_start_ms == T0 + BUCKET
    calibrated = snapshot(state.buckets, BUCKET, 30, calibration=1.5)
    assert calibrated is not None
    assert calibrated.estimate == pytest.approx(0.9)
    assert calibrated.calibrated
    assert not snap.calibrated
    lacking = snapshot(state.buckets, BUCKET, min_labels=1000)
    assert lacking is not None
    assert not lacking.enough
    assert lacking.start_ms == T0 + BUCKET
    assert snapshot(EventTimeAccuracy(BUCKET, HORIZON).buckets, BUCKET, 30) is None


def test_two_partitions_summed_equal_one_state_over_all_events() -> None:
    ev = _events(2000, seed=3)
    one = EventTimeAccuracy(BUCKET, HORIZON)
    parts = [EventTimeAccuracy(BUCKET, HORIZON) for _ in range(2)]
    _fold(one, ev, list(range(2000)))
    for p, state in enumerate(parts):
        _fold(state, ev, [i for i in range(2000) if i % 2 == p])
    assert merge(s.buckets for s in parts) == one.buckets
    assert snapshot(merge(s.buckets for s in parts), BUCKET, 30) == snapshot(
        one.buckets, BUCKET, 30
    )


def test_buckets_past_the_horizon_are_dropped_and_late_events_ignored() -> None:
    state = EventTimeAccuracy(BUCKET, 3 * BUCKET)
    assert state.scored(T0, 0.5) == T0 - T0 % BUCKET
    state.scored(T0 + 5 * BUCKET, 0.5)
    assert state.expire() == [T0 - T0 % BUCKET]
    assert state.scored(T0, 0.5) is None
    assert state.labelled(T0, T0 + SEC, True) is None
    assert list(state.buckets) == [T0 - T0 % BUCKET + 5 * BUCKET]
    with pytest.raises(ValueError, match="bucket_ms"):
        EventTimeAccuracy(BUCKET, BUCKET // 2)


def test_counts_survive_encoding_exactly() -> None:
    c = BucketCounts()
    c.add_scored(0.123456789)
    c.add_labelled(2500, True)
    c.add_labelled(-10, False)  # label stamped before the event: delay 0
    assert decode(encode(c)) == c
    assert (c.labelled, c.correct, c.delay_max_ms, c.delay_counts[0]) == (2, 1, 2500, 1)
    assert c.confidence_micros == 123457
    assert delay_bin(DELAY_EDGES_S[-1] * SEC + 1) == len(DELAY_EDGES_S)


def test_calibration_factor_from_the_holdout_confidence_profile() -> None:
    edges = [0.5, 0.7, 0.9]
    fractions = [0.25, 0.25, 0.25, 0.25]  # midpoints 0.5, 0.6, 0.8, 0.95: mean 0.7125
    assert calibration_factor(0.57, edges, fractions) == pytest.approx(0.57 / 0.7125)
    assert calibration_factor(None, edges, fractions) is None
    assert calibration_factor(0.9, [], []) is None
