"""Where the served model started to be wrong: one change point in a sequence of outcomes.

The trainer knows, for every labelled window, whether the prediction served then was right.
Ordered by event time, those outcomes of one model version are a Bernoulli sequence; when the
world drifts, its success rate drops at some event time. `find_drop` finds the split that best
explains the sequence as two rates (a likelihood-ratio scan over every split, vectorised with
cumulative sums) and reports it only when the drop is both large and significant, so noise in
a stable world does not start retraining.

Why labels and not only the input-drift score: the drift score says the inputs moved, not
whether the model suffers nor since when; the outcomes give the event time from which the new
world's examples are the ones to learn from, and to gate on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# 2 x log-likelihood ratio a drop must reach. The scan tries every split, so this sits well
# above the chi-square(1) 0.1% point (10.8) to keep false alarms on a stable stream rare.
DEFAULT_MIN_LLR = 30.0


@dataclass(frozen=True)
class Drop:
    """A fall in the served model's accuracy at `at_ms` (the first event time after it)."""

    at_ms: int
    before: float
    after: float
    n_before: int
    n_after: int
    llr: float


def _loglik(
    successes: npt.NDArray[np.float64], n: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Bernoulli log-likelihood of s successes in n at the maximum-likelihood rate (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(n > 0, successes / np.maximum(n, 1.0), 0.0)
        ll_s = np.where(successes > 0, successes * np.log(np.where(p > 0, p, 1.0)), 0.0)
        fails = n - successes
        ll_f = np.where(fails > 0, fails * np.log(np.where(p < 1, 1.0 - p, 1.0)), 0.0)
    out: npt.NDArray[np.float64] = ll_s + ll_f
    return out


def find_drop(
    event_time_ms: npt.NDArray[np.int64],
    correct: npt.NDArray[np.bool_],
    *,
    min_segment: int = 50,
    min_drop: float = 0.1,
    min_llr: float = DEFAULT_MIN_LLR,
) -> Drop | None:
    """The most likely single drop in accuracy, if one is significant; outcomes in any order.

    `min_segment` outcomes are needed on each side, the rate must fall by at least `min_drop`,
    and 2 x the log-likelihood ratio against one constant rate must reach `min_llr`.
    """
    n = len(correct)
    if n < 2 * min_segment or n != len(event_time_ms):
        return None
    order = np.argsort(event_time_ms, kind="stable")
    times = np.asarray(event_time_ms)[order]
    hits = np.asarray(correct, dtype=np.float64)[order]
    cum = np.cumsum(hits)
    total = float(cum[-1])
    k = np.arange(min_segment, n - min_segment + 1, dtype=np.float64)  # outcomes before the split
    s_before = cum[k.astype(np.int64) - 1]
    s_after = total - s_before
    n_after = n - k
    rate_before = s_before / k
    rate_after = s_after / n_after
    whole = _loglik(np.array([total]), np.array([float(n)]))[0]
    llr = 2.0 * (_loglik(s_before, k) + _loglik(s_after, n_after) - whole)
    llr = np.where(rate_before - rate_after >= min_drop, llr, -np.inf)
    # A split inside a run of equal event times cannot be told apart from its neighbours.
    idx = k.astype(np.int64)
    llr = np.where(times[idx] > times[idx - 1], llr, -np.inf)
    best = int(np.argmax(llr))
    if not llr[best] >= min_llr:
        return None
    split = int(idx[best])
    return Drop(
        at_ms=int(times[split]),
        before=float(rate_before[best]),
        after=float(rate_after[best]),
        n_before=split,
        n_after=n - split,
        llr=float(llr[best]),
    )
