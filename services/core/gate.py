"""The champion gate: a challenger serves only if it beats the champion on the same recent data.

Both models are scored on one time-ordered holdout, the most recent labelled examples, which
neither was trained on: the champion was trained on data older than its own holdout, and the
challenger's training set ends where this holdout begins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from driftline.services.core.metrics import accuracy, macro_f1

METRIC_MACRO_F1 = "macro_f1"
METRIC_ACCURACY = "accuracy"
GATE_METRICS = (METRIC_MACRO_F1, METRIC_ACCURACY)
DECISION_PROMOTE = "promote"
DECISION_REJECT = "reject"
# Scores are means of counts; this keeps "beats by exactly the margin" from failing on rounding.
_EPS = 1e-9


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    metric: str
    challenger: float
    champion: float | None
    margin: float
    reason: str

    @property
    def decision(self) -> str:
        return DECISION_PROMOTE if self.promote else DECISION_REJECT


@dataclass(frozen=True)
class ChampionGate:
    """Promote iff challenger >= champion + margin (and >= min_score) on the chosen metric."""

    margin: float = 0.01
    metric: str = METRIC_MACRO_F1
    min_score: float = 0.0

    def __post_init__(self) -> None:
        if self.metric not in GATE_METRICS:
            raise ValueError(f"gate metric must be one of {GATE_METRICS}, not {self.metric!r}")

    def score(
        self, y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64], n_classes: int
    ) -> float:
        """The gate's metric of one model's predictions on the holdout."""
        if self.metric == METRIC_ACCURACY:
            return accuracy(y_true, y_pred)
        return macro_f1(y_true, y_pred, n_classes)

    def decide(
        self, challenger: float, champion: float | None, *, champion_problem: str | None = None
    ) -> GateDecision:
        """Promote iff the challenger clears the floor and beats the champion by the margin.

        `champion_problem` says a champion exists but could not be fetched, verified or
        scored: then there is nothing to compare with, and the challenger is not promoted on
        its own score; an operator may still promote it (`driftline models promote`).
        """

        def verdict(promote: bool, reason: str) -> GateDecision:
            return GateDecision(promote, self.metric, challenger, champion, self.margin, reason)

        if not challenger + _EPS >= self.min_score:
            return verdict(
                False, f"{self.metric} {challenger:.4f} is below the floor {self.min_score:.4f}"
            )
        if champion_problem is not None:
            return verdict(
                False,
                f"the champion could not be scored ({champion_problem}); not promoted on the "
                "challenger's score alone (an operator may: driftline models promote)",
            )
        if champion is None:
            return verdict(True, "no champion yet")
        if challenger + _EPS >= champion + self.margin:
            return verdict(
                True,
                f"{self.metric} {challenger:.4f} >= champion {champion:.4f} + {self.margin:.4f}",
            )
        return verdict(
            False, f"{self.metric} {challenger:.4f} < champion {champion:.4f} + {self.margin:.4f}"
        )


def time_ordered_split(
    event_time_ms: npt.NDArray[np.int64], holdout_fraction: float, min_holdout: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train, holdout) indices: the holdout is the most recent examples by event time.

    Ties keep their input order (a stable sort), so the split is deterministic.
    """
    n = len(event_time_ms)
    order = np.argsort(event_time_ms, kind="stable").astype(np.int64)
    size = min(n, max(min_holdout, round(n * holdout_fraction)))
    return order[: n - size], order[n - size :]


def post_change_split(
    event_time_ms: npt.NDArray[np.int64],
    change_point_ms: int,
    *,
    holdout_fraction: float,
    min_holdout: int,
    pre_change_share: float,
    min_examples: int,
    seed: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train, holdout) indices for a world that changed at `change_point_ms`.

    The holdout is the most recent examples from after the change, so both models are judged
    on the new world only. The training set is the rest of the post-change examples, repeated
    until they make up at least `min_examples` (a short new regime still gets enough steps),
    plus a random sample of older examples making up at most `pre_change_share` of it, which
    keeps what did not change without letting the old world dominate. Deterministic for a seed.
    """
    order = np.argsort(event_time_ms, kind="stable").astype(np.int64)
    times = np.asarray(event_time_ms)[order]
    first_post = int(np.searchsorted(times, change_point_ms, side="left"))
    pre, post = order[:first_post], order[first_post:]
    size = min(len(post), max(min_holdout, round(len(post) * holdout_fraction)))
    post_train, holdout = post[: len(post) - size], post[len(post) - size :]
    if len(post_train) == 0:
        return post_train, holdout
    share = min(max(pre_change_share, 0.0), 0.9)
    reps = max(1, math.ceil(min_examples * (1.0 - share) / len(post_train)))
    weighted = np.tile(post_train, reps)
    n_pre = min(len(pre), round(share / (1.0 - share) * len(weighted)))
    rng = np.random.default_rng(seed)
    sampled = np.sort(rng.choice(pre, size=n_pre, replace=False)) if n_pre else pre[:0]
    return np.concatenate([sampled, weighted]).astype(np.int64), holdout
