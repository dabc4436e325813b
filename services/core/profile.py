"""Reference distributions and drift scores (PSI) over per-example summary features.

The trainer profiles its training inputs and holdout confidences when it publishes a version;
the features app profiles what the version sees live and compares the two with these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT_BINS = 10
PSI_EPSILON = 1e-4
# Common reading of PSI: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
PSI_DRIFT_THRESHOLD = 0.25
CONFIDENCE_FEATURE = "confidence"


@dataclass(frozen=True)
class Histogram:
    name: str
    edges: npt.NDArray[np.float64]  # inner edges; bins are (-inf, e0], (e0, e1], ..., (ek, inf)
    fractions: npt.NDArray[np.float64]


def sensor_summaries(
    windows: npt.NDArray[np.float32], channel_names: tuple[str, ...] | list[str]
) -> dict[str, npt.NDArray[np.float64]]:
    """Per-window mean, std and max of every channel: [N, C, S] -> {"<channel>.<stat>": [N]}."""
    x = windows.astype(np.float64, copy=False)
    out: dict[str, npt.NDArray[np.float64]] = {}
    for stat, values in (("mean", x.mean(axis=2)), ("std", x.std(axis=2)), ("max", x.max(axis=2))):
        for c, name in enumerate(channel_names):
            out[f"{name}.{stat}"] = values[:, c]
    return out


def _bin_counts(
    edges: npt.NDArray[np.float64], values: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    slots = np.searchsorted(edges, values, side="left")
    return np.bincount(slots, minlength=len(edges) + 1).astype(np.float64)


def profile(name: str, values: npt.ArrayLike, bins: int = DEFAULT_BINS) -> Histogram:
    """Quantile bins of the reference values, so each bin holds about the same share."""
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    if len(data) == 0:
        return Histogram(name, np.zeros(0), np.ones(1))
    edges = np.unique(np.quantile(data, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = _bin_counts(edges, data)
    return Histogram(name, edges, counts / counts.sum())


def psi(reference: Histogram, values: npt.ArrayLike) -> float:
    """Population stability index of live values against the reference bins."""
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    if len(data) == 0:
        return 0.0
    live = _bin_counts(reference.edges, data) / len(data)
    ref = np.clip(reference.fractions, PSI_EPSILON, None)
    live = np.clip(live, PSI_EPSILON, None)
    return float(np.sum((live - ref) * np.log(live / ref)))
