"""The champion gate: a challenger serves only when it beats the champion by the margin."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.services.core.gate import ChampionGate, time_ordered_split


def test_promotes_only_a_challenger_that_wins_by_the_margin() -> None:
    gate = ChampionGate(margin=0.02)
    assert gate.decide(0.82, 0.80).promote, "winning by exactly the margin is enough"
    assert not gate.decide(0.819, 0.80).promote
    assert not gate.decide(0.70, 0.80).promote
    worse = gate.decide(0.70, 0.80)
    assert (worse.challenger, worse.champion, worse.decision) == (0.70, 0.80, "reject")
    assert "< champion" in worse.reason


def test_with_no_usable_champion_only_the_floor_applies() -> None:
    gate = ChampionGate(margin=0.05, min_score=0.3)
    assert gate.decide(0.31, None).promote
    assert not gate.decide(0.29, None).promote
    assert not gate.decide(0.29, 0.1).promote, "the floor holds even against a weak champion"


def test_scores_with_the_configured_metric() -> None:
    y = np.array([0, 0, 0, 0, 1, 2], dtype=np.int64)
    pred = np.zeros(6, dtype=np.int64)
    assert ChampionGate(metric="accuracy").score(y, pred, 4) == pytest.approx(4 / 6)
    f1 = ChampionGate(metric="macro_f1").score(y, pred, 4)
    assert f1 == pytest.approx((2 * 4 / (4 + 6)) / 3), "classes 0, 1, 2 present; 1 and 2 score 0"
    with pytest.raises(ValueError, match="gate metric"):
        ChampionGate(metric="auc")


def test_the_holdout_is_the_most_recent_examples() -> None:
    times = np.array([50, 10, 40, 20, 30, 60, 70, 80, 90, 100], dtype=np.int64)
    train, hold = time_ordered_split(times, 0.2, min_holdout=1)
    assert sorted(times[hold].tolist()) == [90, 100]
    assert times[train].max() < times[hold].min(), "nothing in training is newer than the holdout"
    assert sorted(np.concatenate([train, hold]).tolist()) == list(range(10))
    _, small = time_ordered_split(times, 0.2, min_holdout=4)
    assert len(small) == 4, "at least min_holdout examples are held out"


def test_a_champion_that_cannot_be_scored_is_no_reason_to_promote() -> None:
    gate = ChampionGate(metric="macro_f1", margin=0.01, min_score=0.3)
    decision = gate.decide(0.99, None, champion_problem="v3: sha256 mismatch")
    assert not decision.promote
    assert "v3: sha256 mismatch" in decision.reason
    assert "driftline models promote" in decision.reason
    assert gate.decide(0.99, None).promote, "with no champion at all, the floor is the bar"
