"""Live accuracy of a model version by event time: per bucket, with label coverage and delay.

Every scored event counts in the bucket of its event time (with the confidence served), and
every label joined to a prediction counts in that same bucket (with its delay, label time minus
event time). So a backlog of labels for old events fills old buckets and never moves the
figure of the newest ones: the present is never shown from the past. Beside the true accuracy
each bucket carries a confidence-based estimate, there before any label comes.

Counts are integers (confidence in millionths) so the buckets of several partitions add
exactly, in any order, and a state is the same whatever order its events came in.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from driftline.services.core.windows import window_start

# Upper bounds (seconds) of the label-delay histogram kept per bucket; one more bin is open.
DELAY_EDGES_S: tuple[int, ...] = (1, 5, 15, 60, 300, 900, 3600, 21_600, 86_400, 604_800)
CONFIDENCE_SCALE = 1_000_000


def _no_delays() -> list[int]:
    return [0] * (len(DELAY_EDGES_S) + 1)


def delay_bin(delay_ms: int) -> int:
    """The histogram bin of a label delay: the first edge it does not exceed."""
    for i, edge in enumerate(DELAY_EDGES_S):
        if delay_ms <= edge * 1000:
            return i
    return len(DELAY_EDGES_S)


class BucketCounts(msgspec.Struct, array_like=True):
    """What one event-time bucket holds (of one partition, or summed over several)."""

    scored: int = 0
    confidence_micros: int = 0  # sum of the confidence served, in millionths
    labelled: int = 0
    correct: int = 0
    delay_sum_ms: int = 0
    delay_max_ms: int = 0
    delay_counts: list[int] = msgspec.field(default_factory=_no_delays)

    @property
    def updates(self) -> int:
        """Events folded in so far: only grows, so it orders writes of one bucket."""
        return self.scored + self.labelled

    def add_scored(self, confidence: float) -> None:
        self.scored += 1
        self.confidence_micros += round(min(max(confidence, 0.0), 1.0) * CONFIDENCE_SCALE)

    def add_labelled(self, delay_ms: int, correct: bool) -> None:
        delay_ms = max(delay_ms, 0)  # a label stamped before its event (clock skew) counts as 0
        self.labelled += 1
        self.correct += int(correct)
        self.delay_sum_ms += delay_ms
        self.delay_max_ms = max(self.delay_max_ms, delay_ms)
        self.delay_counts[delay_bin(delay_ms)] += 1

    def merged(self, other: BucketCounts) -> BucketCounts:
        return BucketCounts(
            scored=self.scored + other.scored,
            confidence_micros=self.confidence_micros + other.confidence_micros,
            labelled=self.labelled + other.labelled,
            correct=self.correct + other.correct,
            delay_sum_ms=self.delay_sum_ms + other.delay_sum_ms,
            delay_max_ms=max(self.delay_max_ms, other.delay_max_ms),
            delay_counts=[
                a + b for a, b in zip(self.delay_counts, other.delay_counts, strict=True)
            ],
        )

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def coverage(self) -> float | None:
        """Labelled over scored; None before anything is scored (a rebuild has no scored)."""
        return self.labelled / self.scored if self.scored else None

    @property
    def confidence_mean(self) -> float | None:
        return self.confidence_micros / CONFIDENCE_SCALE / self.scored if self.scored else None

    @property
    def delay_mean_ms(self) -> float | None:
        return self.delay_sum_ms / self.labelled if self.labelled else None


class EventTimeAccuracy(msgspec.Struct):
    """The buckets of one model version in one partition, within `horizon_ms` of the newest.

    `scored` and `labelled` return the start of the bucket they changed, or None for an event
    older than the horizon (its bucket is gone or would be dropped at once).
    """

    bucket_ms: int
    horizon_ms: int
    buckets: dict[int, BucketCounts] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bucket_ms <= 0 or self.horizon_ms < self.bucket_ms:
            raise ValueError("need 0 < bucket_ms <= horizon_ms")

    @property
    def newest_ms(self) -> int:
        """Start of the newest bucket; -1 when empty."""
        return max(self.buckets, default=-1)

    def oldest_kept(self, newest_start: int) -> int:
        return newest_start - self.horizon_ms + self.bucket_ms

    def _bucket(self, event_time_ms: int) -> tuple[int, BucketCounts] | None:
        start = window_start(event_time_ms, self.bucket_ms)
        if self.buckets and start < self.oldest_kept(self.newest_ms):
            return None
        counts = self.buckets.get(start)
        if counts is None:
            counts = self.buckets[start] = BucketCounts()
        return start, counts

    def scored(self, event_time_ms: int, confidence: float) -> int | None:
        found = self._bucket(event_time_ms)
        if found is None:
            return None
        found[1].add_scored(confidence)
        return found[0]

    def labelled(self, event_time_ms: int, label_time_ms: int, correct: bool) -> int | None:
        found = self._bucket(event_time_ms)
        if found is None:
            return None
        found[1].add_labelled(label_time_ms - event_time_ms, correct)
        return found[0]

    def expire(self) -> list[int]:
        """Drop the buckets past the horizon of the newest; returns their starts."""
        if not self.buckets:
            return []
        oldest = self.oldest_kept(self.newest_ms)
        gone = sorted(b for b in self.buckets if b < oldest)
        for b in gone:
            del self.buckets[b]
        return gone


def merge(parts: Iterable[Mapping[int, BucketCounts]]) -> dict[int, BucketCounts]:
    """Buckets of several partitions (or workers) summed by bucket start."""
    out: dict[int, BucketCounts] = {}
    for part in parts:
        for start, counts in part.items():
            have = out.get(start)
            out[start] = counts.merged(BucketCounts()) if have is None else have.merged(counts)
    return out


@dataclass(frozen=True)
class AccuracySnapshot:
    """The newest event-time bucket with enough labels (or, lacking one, any labels).

    `accuracy`/`correct`/`total` are its labelled predictions; `enough` says whether it has
    `min_labels` of them. `estimate` is the confidence-based estimate of the newest bucket that
    has scored events (`estimate_start_ms`), an estimate and not a measurement.
    """

    accuracy: float
    correct: int
    total: int
    scored: int
    coverage: float | None
    start_ms: int
    end_ms: int
    delay_mean_ms: float
    delay_max_ms: int
    enough: bool
    estimate: float | None = None
    estimate_start_ms: int | None = None
    calibrated: bool = False


def estimate(counts: BucketCounts, calibration: float | None) -> float | None:
    """Accuracy estimated from confidence: the mean confidence served, times the version's
    calibration factor if it has one (else the model is assumed calibrated), within [0, 1]."""
    mean = counts.confidence_mean
    if mean is None:
        return None
    return min(1.0, max(0.0, mean * (calibration if calibration is not None else 1.0)))


def snapshot(
    buckets: Mapping[int, BucketCounts],
    bucket_ms: int,
    min_labels: int,
    calibration: float | None = None,
) -> AccuracySnapshot | None:
    """What to show as live accuracy; None before any label."""
    labelled = sorted((b for b, c in buckets.items() if c.labelled), reverse=True)
    if not labelled:
        return None
    ready = [b for b in labelled if buckets[b].labelled >= min_labels]
    start = ready[0] if ready else labelled[0]
    c = buckets[start]
    scored = sorted((b for b, x in buckets.items() if x.scored), reverse=True)
    est_start = scored[0] if scored else None
    return AccuracySnapshot(
        accuracy=c.correct / c.labelled,
        correct=c.correct,
        total=c.labelled,
        scored=c.scored,
        coverage=c.coverage,
        start_ms=start,
        end_ms=start + bucket_ms,
        delay_mean_ms=c.delay_sum_ms / c.labelled,
        delay_max_ms=c.delay_max_ms,
        enough=bool(ready),
        estimate=estimate(buckets[est_start], calibration) if est_start is not None else None,
        estimate_start_ms=est_start,
        calibrated=calibration is not None,
    )


def calibration_factor(
    holdout_accuracy: float | None, edges: Sequence[float], fractions: Sequence[float]
) -> float | None:
    """Holdout accuracy over holdout mean confidence, the latter read off the version's binned
    confidence profile (bin midpoints; the open outer bins at their inner edge and halfway to 1).

    A rough, cheap correction of over- or under-confidence; None when the version lacks either.
    """
    if holdout_accuracy is None or not edges or len(fractions) != len(edges) + 1:
        return None
    mids = [edges[0]]
    mids += [(lo + hi) / 2 for lo, hi in itertools.pairwise(edges)]
    mids.append((edges[-1] + 1.0) / 2)
    total = sum(fractions)
    if total <= 0:
        return None
    mean = sum(m * f for m, f in zip(mids, fractions, strict=True)) / total
    return holdout_accuracy / mean if mean > 0 else None


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(BucketCounts)


def encode(counts: BucketCounts) -> bytes:
    return _ENCODER.encode(counts)


def decode(data: bytes) -> BucketCounts:
    return _DECODER.decode(data)
