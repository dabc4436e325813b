"""Event-time windows and mergeable statistics: tumbling buckets, hopping windows, drift samples.

Hopping windows are unions of tumbling buckets (10 min every 1 min = ten 1-min buckets), so the
state is one small aggregate per bucket and a hopping window is a merge. Confidence percentiles
come from a fixed-bin histogram, which merges exactly; the mean comes from an integer sum of
confidences in millionths, so any merge order gives bit-identical results (replays converge).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from driftline.services.core.profile import Histogram, psi

MINUTE_MS = 60_000
CONFIDENCE_BINS = 100  # bins of width 0.01 on [0, 1]: percentiles are exact to half a bin
BIN_WIDTH = 1.0 / CONFIDENCE_BINS
MICRO = 1_000_000
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class WindowSpec:
    """Tumbling buckets of `bucket_ms`; hopping windows of `hopping_ms` every `hop_ms`."""

    bucket_ms: int = MINUTE_MS
    hopping_ms: int = 10 * MINUTE_MS
    hop_ms: int = MINUTE_MS

    def __post_init__(self) -> None:
        if min(self.bucket_ms, self.hopping_ms, self.hop_ms) <= 0:
            raise ValueError("window sizes must be positive")
        if self.hop_ms % self.bucket_ms or self.hopping_ms % self.hop_ms:
            raise ValueError(
                "hopping windows are built from buckets: the hop must be a multiple of the "
                f"bucket and the size a multiple of the hop (got {self})"
            )

    def bucket_of(self, t_ms: int) -> int:
        """Start of the tumbling bucket holding event time t."""
        return window_start(t_ms, self.bucket_ms)

    def hopping_starts(self, bucket: int) -> list[int]:
        """Starts of every hopping window that contains the bucket, oldest first."""
        last = window_start(bucket, self.hop_ms)
        first = last - self.hopping_ms + self.hop_ms
        return list(range(first, last + 1, self.hop_ms))

    def trailing_hopping_start(self, bucket: int) -> int:
        """The hopping window that ends with the bucket's hop: "the last 10 minutes" as of it."""
        return window_start(bucket, self.hop_ms) - self.hopping_ms + self.hop_ms

    def buckets_in(self, hopping_start: int) -> range:
        """Bucket starts that make up the hopping window [start, start + hopping_ms)."""
        return range(hopping_start, hopping_start + self.hopping_ms, self.bucket_ms)


def window_start(t_ms: int, size_ms: int) -> int:
    """Start of the tumbling window of `size_ms` that holds t (aligned to the epoch)."""
    return t_ms - t_ms % size_ms


def confidence_bins(confidence: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Histogram bin of each confidence: [0, 0.01) -> 0, ..., [0.99, 1] -> 99."""
    idx = np.floor(np.clip(confidence, 0.0, 1.0) * CONFIDENCE_BINS).astype(np.int64)
    return np.minimum(idx, CONFIDENCE_BINS - 1)


class _StatsWire(msgspec.Struct, array_like=True, frozen=True):
    """Compact serialised form of ConfidenceStats (changelog values)."""

    count: int
    sum_micro: int
    low: int
    first_ms: int
    last_ms: int
    bins: bytes  # indexes of the non-empty histogram bins (uint8), then their counts
    counts: list[int]
    classes: dict[str, int]


_ENCODER = msgspec.msgpack.Encoder(order="sorted")
_DECODER = msgspec.msgpack.Decoder(_StatsWire)


def clean_confidence(confidence: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Confidences as folded: float64 in [0, 1], non-finite values read 0 (NaN) or clipped."""
    conf = np.nan_to_num(np.asarray(confidence, dtype=np.float64).ravel(), nan=0.0)
    clipped: npt.NDArray[np.float64] = np.clip(conf, 0.0, 1.0)
    return clipped


class ConfidenceStats:
    """Count, exact mean, histogram percentiles, low-confidence count and class mix of a window."""

    __slots__ = ("classes", "count", "first_ms", "hist", "last_ms", "low", "sum_micro")

    def __init__(self) -> None:
        self.count = 0
        self.sum_micro = 0
        self.low = 0
        self.first_ms = 0
        self.last_ms = 0
        self.hist: npt.NDArray[np.int64] = np.zeros(CONFIDENCE_BINS, dtype=np.int64)
        self.classes: dict[str, int] = {}

    def add(
        self,
        confidence: npt.ArrayLike,
        predicted: Sequence[str],
        event_time_ms: npt.ArrayLike,
        low_threshold: float,
        known_classes: Iterable[str] = (),
    ) -> None:
        """Fold in a batch of predictions (one value per event; non-finite confidences read 0).

        `known_classes` (the model's class list) appear in the class mix even when never
        predicted, so a window's mix always names every class.
        """
        conf = clean_confidence(confidence)
        times = np.asarray(event_time_ms, dtype=np.int64).ravel()
        if not len(conf) == len(times) == len(predicted):
            raise ValueError("confidence, predicted and event_time_ms must have the same length")
        if not len(conf):
            return
        mix: dict[str, int] = {}
        for name in predicted:
            mix[name] = mix.get(name, 0) + 1
        self.fold(
            count=len(conf),
            sum_micro=int(np.rint(conf * MICRO).astype(np.int64).sum()),
            low=int(np.count_nonzero(conf < low_threshold)),
            first_ms=int(times.min()),
            last_ms=int(times.max()),
            hist=np.bincount(confidence_bins(conf), minlength=CONFIDENCE_BINS),
            classes=mix,
            known_classes=known_classes,
        )

    def fold(
        self,
        *,
        count: int,
        sum_micro: int,
        low: int,
        first_ms: int,
        last_ms: int,
        hist: npt.NDArray[np.int64],
        classes: Mapping[str, int],
        known_classes: Iterable[str] = (),
    ) -> None:
        """Fold in the sums of `count` events (what services.core.windowfold computes)."""
        if count <= 0:
            return
        self.first_ms = first_ms if self.count == 0 else min(self.first_ms, first_ms)
        self.last_ms = last_ms if self.count == 0 else max(self.last_ms, last_ms)
        self.count += count
        self.sum_micro += sum_micro
        self.low += low
        self.hist += hist
        mix = self.classes
        for name in known_classes:
            mix.setdefault(name, 0)
        for name, n in classes.items():
            if n:
                mix[name] = mix.get(name, 0) + n

    def merge(self, other: ConfidenceStats) -> None:
        """Add another window's statistics into this one (commutative and associative)."""
        if other.count == 0:
            return
        self.first_ms = other.first_ms if self.count == 0 else min(self.first_ms, other.first_ms)
        self.last_ms = other.last_ms if self.count == 0 else max(self.last_ms, other.last_ms)
        self.count += other.count
        self.sum_micro += other.sum_micro
        self.low += other.low
        self.hist += other.hist
        for name, c in other.classes.items():
            self.classes[name] = self.classes.get(name, 0) + c

    @classmethod
    def merged(cls, parts: Iterable[ConfidenceStats]) -> ConfidenceStats:
        out = cls()
        for part in parts:
            out.merge(part)
        return out

    @property
    def mean(self) -> float:
        return self.sum_micro / self.count / MICRO if self.count else 0.0

    @property
    def low_rate(self) -> float:
        return self.low / self.count if self.count else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100), interpolated inside the histogram bin that holds it."""
        return self.percentiles((q,))[0]

    def percentiles(self, qs: Sequence[float]) -> list[float]:
        """Several percentiles from one pass over the histogram."""
        if self.count == 0:
            return [0.0] * len(qs)
        cumulative = np.cumsum(self.hist)
        out = []
        for q in qs:
            rank = q / 100.0 * self.count
            b = min(int(np.searchsorted(cumulative, rank, side="left")), CONFIDENCE_BINS - 1)
            before = int(cumulative[b - 1]) if b > 0 else 0
            inside = int(self.hist[b])
            frac = (rank - before) / inside if inside else 0.0
            out.append(float((b + min(max(frac, 0.0), 1.0)) * BIN_WIDTH))
        return out

    def class_mix(self) -> dict[str, float]:
        """Share of each predicted class, by class name."""
        return {k: v / self.count for k, v in sorted(self.classes.items())} if self.count else {}

    def to_bytes(self) -> bytes:
        nonzero = np.flatnonzero(self.hist)
        wire = _StatsWire(
            self.count,
            self.sum_micro,
            self.low,
            self.first_ms,
            self.last_ms,
            nonzero.astype(np.uint8).tobytes(),
            self.hist[nonzero].tolist(),
            self.classes,
        )
        return _ENCODER.encode(wire)

    @classmethod
    def from_bytes(cls, data: bytes) -> ConfidenceStats:
        wire = _DECODER.decode(data)
        out = cls()
        out.count, out.sum_micro, out.low = wire.count, wire.sum_micro, wire.low
        out.first_ms, out.last_ms = wire.first_ms, wire.last_ms
        out.hist[np.frombuffer(wire.bins, dtype=np.uint8)] = wire.counts
        out.classes = dict(wire.classes)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfidenceStats):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]


class RecentSamples:
    """Per-feature samples of the most recent `span_ms` of event time, capped at `max_samples`.

    Chunks are added whole (one per batch) and dropped whole from the oldest end, so the buffer
    costs nothing per event; `values(name)` concatenates what is kept.
    """

    def __init__(self, span_ms: int, max_samples: int) -> None:
        self.span_ms = span_ms
        self.max_samples = max_samples
        self._chunks: list[tuple[npt.NDArray[np.int64], dict[str, npt.NDArray[np.float64]]]] = []

    def add(self, event_time_ms: npt.ArrayLike, features: Mapping[str, npt.ArrayLike]) -> None:
        times = np.asarray(event_time_ms, dtype=np.int64).ravel()
        if len(times) == 0:
            return
        cols = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in features.items()}
        for name, col in cols.items():
            if len(col) != len(times):
                raise ValueError(f"feature {name!r} has {len(col)} values for {len(times)} times")
        self._chunks.append((times, cols))
        self.trim()

    @property
    def newest_ms(self) -> int:
        return max((int(t.max()) for t, _ in self._chunks), default=0)

    def trim(self) -> None:
        """Drop samples older than newest - span, then the oldest chunks beyond max_samples."""
        if not self._chunks:
            return
        cutoff = self.newest_ms - self.span_ms
        kept: list[tuple[npt.NDArray[np.int64], dict[str, npt.NDArray[np.float64]]]] = []
        for times, cols in self._chunks:
            keep = times >= cutoff
            if keep.all():
                kept.append((times, cols))
            elif keep.any():
                kept.append((times[keep], {k: v[keep] for k, v in cols.items()}))
        while len(kept) > 1 and sum(len(t) for t, _ in kept) - len(kept[0][0]) >= self.max_samples:
            kept.pop(0)
        self._chunks = kept

    def __len__(self) -> int:
        return sum(len(t) for t, _ in self._chunks)

    def window(self) -> tuple[int, int]:
        """(oldest, newest) event time held; (0, 0) when empty."""
        if not self._chunks:
            return (0, 0)
        return (min(int(t.min()) for t, _ in self._chunks), self.newest_ms)

    def values(self, name: str) -> npt.NDArray[np.float64]:
        parts = [cols[name] for _, cols in self._chunks if name in cols]
        return np.concatenate(parts) if parts else np.zeros(0)

    def psi_scores(self, reference: Iterable[Histogram]) -> dict[str, float]:
        """PSI of each reference feature that has live samples, by feature name."""
        scores: dict[str, float] = {}
        for hist in reference:
            live = self.values(hist.name)
            if len(live):
                scores[hist.name] = psi(hist, live)
        return scores
