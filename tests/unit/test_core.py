"""The pure core: predictions, offsets to commit, and quality measures against numpy oracles."""

from __future__ import annotations

import numpy as np

from driftline.services.core.metrics import accuracy, confusion, macro_f1
from driftline.services.core.scoring import commit_offsets, rewind_offsets, top1


def test_top1_picks_the_most_likely_class() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    index, conf = top1(probs)
    assert index.tolist() == [1, 0]
    np.testing.assert_allclose(conf, [0.7, 0.5])


def test_commit_offsets_are_one_past_the_highest_per_partition() -> None:
    consumed = [("t", 0, 5), ("t", 1, 9), ("t", 0, 7), ("t", 0, 6), ("u", 0, 1)]
    assert commit_offsets(consumed) == {("t", 0): 8, ("t", 1): 10, ("u", 0): 2}
    assert rewind_offsets(consumed) == {("t", 0): 5, ("t", 1): 9, ("u", 0): 1}


def test_quality_measures_match_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 500)
    p = np.where(rng.random(500) < 0.8, y, rng.integers(0, 4, 500))
    assert accuracy(y, p) == np.mean(y == p)
    cm = confusion(y, p, 4)
    for t in range(4):
        for q in range(4):
            assert cm[t, q] == np.sum((y == t) & (p == q))
    f1s = []
    for c in range(4):
        tp = np.sum((y == c) & (p == c))
        prec = tp / max(np.sum(p == c), 1)
        rec = tp / max(np.sum(y == c), 1)
        f1s.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    assert abs(macro_f1(y, p, 4) - float(np.mean(f1s))) < 1e-12


def test_macro_f1_ignores_classes_absent_from_truth_and_prediction() -> None:
    y = np.array([0, 0, 1, 1])
    assert macro_f1(y, y, 4) == 1.0
    assert accuracy(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == 0.0
