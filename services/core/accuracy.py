"""Rolling live accuracy of one model version, from labelled predictions, by label time.

Labels are counted in buckets of label time; the rolling window is the buckets within
`window_ms` of the newest label seen. The result depends only on which labels arrived, not on
their order, so a replay of the same labelled windows gives the same accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from services.core.windows import window_start


@dataclass(frozen=True)
class AccuracySnapshot:
    """Accuracy over the rolling window; `lifetime` counts every label ever folded in."""

    accuracy: float
    correct: int
    total: int
    window_start_ms: int
    window_end_ms: int
    lifetime: int


class RollingAccuracy(msgspec.Struct, array_like=True):
    """Correct/total counts per label-time bucket of one model version."""

    bucket_ms: int
    window_ms: int
    buckets: dict[int, tuple[int, int]] = msgspec.field(default_factory=dict)
    newest_ms: int = -1
    lifetime: int = 0

    def __post_init__(self) -> None:
        if self.bucket_ms <= 0 or self.window_ms < self.bucket_ms:
            raise ValueError("need 0 < bucket_ms <= window_ms")

    def _oldest_bucket(self) -> int:
        newest = window_start(self.newest_ms, self.bucket_ms)
        return newest - self.window_ms + self.bucket_ms

    def add(self, label_time_ms: int, correct: bool) -> None:
        """Count one labelled prediction; labels older than the window only count in lifetime."""
        self.lifetime += 1
        self.newest_ms = max(self.newest_ms, label_time_ms)
        bucket = window_start(label_time_ms, self.bucket_ms)
        oldest = self._oldest_bucket()
        if bucket >= oldest:
            c, t = self.buckets.get(bucket, (0, 0))
            self.buckets[bucket] = (c + int(correct), t + 1)
        for old in [b for b in self.buckets if b < oldest]:
            del self.buckets[old]

    def snapshot(self) -> AccuracySnapshot:
        oldest = self._oldest_bucket()
        kept = [v for b, v in self.buckets.items() if b >= oldest]
        correct = sum(c for c, _ in kept)
        total = sum(t for _, t in kept)
        return AccuracySnapshot(
            accuracy=correct / total if total else 0.0,
            correct=correct,
            total=total,
            window_start_ms=max(oldest, 0) if self.newest_ms >= 0 else 0,
            window_end_ms=max(self.newest_ms, 0),
            lifetime=self.lifetime,
        )


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(RollingAccuracy)


def encode(state: RollingAccuracy) -> bytes:
    """Deterministic bytes: buckets in time order, so equal states encode equally."""
    ordered = msgspec.structs.replace(state, buckets=dict(sorted(state.buckets.items())))
    return _ENCODER.encode(ordered)


def decode(data: bytes) -> RollingAccuracy:
    return _DECODER.decode(data)
