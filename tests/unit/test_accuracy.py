"""Rolling live accuracy: by label time, independent of arrival order."""

from __future__ import annotations

import itertools
import random

import pytest

from services.core.accuracy import RollingAccuracy, decode, encode

MIN = 60_000


def test_accuracy_over_the_rolling_window() -> None:
    acc = RollingAccuracy(bucket_ms=MIN, window_ms=10 * MIN)
    for i in range(10):
        acc.add(label_time_ms=i * 1000, correct=i < 7)
    snap = acc.snapshot()
    assert (snap.correct, snap.total, snap.lifetime) == (7, 10, 10)
    assert snap.accuracy == pytest.approx(0.7)
    assert snap.window_end_ms == 9000


def test_old_labels_leave_the_window() -> None:
    acc = RollingAccuracy(bucket_ms=MIN, window_ms=5 * MIN)
    acc.add(0, correct=False)
    acc.add(1000, correct=False)
    acc.add(20 * MIN, correct=True)
    snap = acc.snapshot()
    assert (snap.correct, snap.total, snap.lifetime) == (1, 1, 3)
    assert snap.window_start_ms == 16 * MIN
    assert list(acc.buckets) == [20 * MIN]


def test_the_same_labels_in_any_order_give_the_same_state() -> None:
    rng = random.Random(5)
    labels = [(rng.randrange(0, 30 * MIN), rng.random() < 0.8) for _ in range(200)]
    states = set()
    for _ in range(5):
        rng.shuffle(labels)
        acc = RollingAccuracy(bucket_ms=MIN, window_ms=10 * MIN)
        for t, ok in labels:
            acc.add(t, ok)
        states.add(encode(acc))
    assert len(states) == 1


def test_state_round_trips_and_validates() -> None:
    acc = RollingAccuracy(bucket_ms=MIN, window_ms=2 * MIN)
    for t, ok in itertools.product(range(0, 3 * MIN, 20_000), (True, False)):
        acc.add(t, ok)
    again = decode(encode(acc))
    assert again.snapshot() == acc.snapshot()
    with pytest.raises(ValueError, match="bucket_ms"):
        RollingAccuracy(bucket_ms=MIN, window_ms=MIN // 2)


def test_no_labels_reads_zero() -> None:
    snap = RollingAccuracy(bucket_ms=MIN, window_ms=MIN).snapshot()
    assert (snap.accuracy, snap.total, snap.window_start_ms, snap.window_end_ms) == (0.0, 0, 0, 0)
