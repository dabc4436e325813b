"""Change points in served accuracy, the post-change training split, and the triggers on them."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.services.core.changepoint import find_drop
from driftline.services.core.gate import post_change_split
from driftline.services.core.triggers import (
    TRIGGER_CHANGE_POINT,
    TRIGGER_NEW_LABELS,
    TRIGGER_NEW_REGIME,
    TriggerPolicy,
    TriggerState,
    decide,
)


def outcomes(rates: list[tuple[int, float]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Event times 0, 1000, 2000, ... and Bernoulli outcomes, `n` of each (n, rate) segment."""
    rng = np.random.default_rng(seed)
    correct = np.concatenate([rng.random(n) < p for n, p in rates])
    times = np.arange(len(correct), dtype=np.int64) * 1000
    return times, correct


def test_a_drop_is_found_where_the_world_changed() -> None:
    times, correct = outcomes([(600, 0.95), (300, 0.25)])
    drop = find_drop(times, correct)
    assert drop is not None
    assert abs(drop.at_ms - 600_000) <= 10_000  # within ten outcomes of the true change
    assert drop.before > 0.9
    assert drop.after < 0.35
    assert drop.n_before + drop.n_after == 900


def test_the_order_outcomes_arrive_in_does_not_matter() -> None:
    times, correct = outcomes([(400, 0.9), (200, 0.3)], seed=3)
    perm = np.random.default_rng(1).permutation(len(times))
    assert find_drop(times[perm], correct[perm]) == find_drop(times, correct)


@pytest.mark.parametrize("seed", range(20))
def test_a_stable_stream_raises_no_alarm(seed: int) -> None:
    times, correct = outcomes([(2000, 0.9)], seed=seed)
    assert find_drop(times, correct) is None


def test_a_rise_is_not_a_drop_and_small_drops_are_ignored() -> None:
    assert find_drop(*outcomes([(400, 0.3), (400, 0.95)])) is None
    assert find_drop(*outcomes([(3000, 0.95), (3000, 0.9)]), min_drop=0.1) is None


def test_too_few_outcomes_on_either_side_find_nothing() -> None:
    times, correct = outcomes([(60, 0.95), (30, 0.0)])
    assert find_drop(times, correct, min_segment=50) is None
    assert find_drop(times, correct, min_segment=25) is not None


def test_post_change_split_holds_out_only_the_new_world() -> None:
    times = np.arange(1000, dtype=np.int64) * 10
    change = 8000  # the last 200 examples are from after the change
    train, hold = post_change_split(
        times,
        change,
        holdout_fraction=0.2,
        min_holdout=50,
        pre_change_share=0.2,
        min_examples=600,
        seed=7,
    )
    assert (times[hold] >= change).all()
    assert len(hold) == 50
    assert set(hold.tolist()).isdisjoint(train.tolist())
    post = times[train] >= change
    assert post.mean() == pytest.approx(0.8, abs=0.01)  # the new world dominates
    assert len(train) >= 600
    # the post-change examples not held out are all used, each equally often
    counts = np.bincount(train[post], minlength=1000)[800:950]
    assert counts.min() == counts.max() >= 1
    again = post_change_split(
        times,
        change,
        holdout_fraction=0.2,
        min_holdout=50,
        pre_change_share=0.2,
        min_examples=600,
        seed=7,
    )
    assert np.array_equal(again[0], train)
    assert np.array_equal(again[1], hold)


def test_post_change_split_without_old_examples_trains_on_the_new_only() -> None:
    times = np.arange(300, dtype=np.int64)
    train, hold = post_change_split(
        times,
        0,
        holdout_fraction=0.2,
        min_holdout=50,
        pre_change_share=0.2,
        min_examples=100,
        seed=1,
    )
    assert len(hold) == 60
    assert len(train) == 240


POLICY = TriggerPolicy(min_new_labels=500, min_labels=200, min_post_change_labels=200)


def test_a_change_point_waits_for_post_change_examples_and_blocks_other_triggers() -> None:
    waiting = TriggerState(
        last_run_ms=0, buffered=3000, new_labels=900, post_change=150, adapting=True
    )
    assert decide(POLICY, waiting, 0) is None  # 900 new labels, mostly of the old world
    ready = TriggerState(
        last_run_ms=0, buffered=3000, new_labels=900, post_change=200, adapting=True
    )
    assert decide(POLICY, ready, 0) == TRIGGER_CHANGE_POINT


def test_a_new_regime_retrains_as_its_examples_double() -> None:
    after_first = TriggerState(
        last_run_ms=0, buffered=3000, new_labels=10, post_change=390, post_change_at_last_run=200
    )
    assert decide(POLICY, after_first, 0) is None
    doubled = TriggerState(
        last_run_ms=0, buffered=3000, new_labels=10, post_change=400, post_change_at_last_run=200
    )
    assert decide(POLICY, doubled, 0) == TRIGGER_NEW_REGIME
    # a rejected first try keeps waiting for the new world to grow, not for old-world labels
    rejected = TriggerState(
        last_run_ms=0,
        buffered=3000,
        new_labels=900,
        post_change=300,
        post_change_at_last_run=200,
        adapting=True,
    )
    assert decide(POLICY, rejected, 0) is None
    settled = TriggerState(
        last_run_ms=0, buffered=3000, new_labels=600, post_change=300, post_change_at_last_run=200
    )
    assert decide(POLICY, settled, 0) == TRIGGER_NEW_LABELS
