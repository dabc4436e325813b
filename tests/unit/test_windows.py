"""Window assignment and mergeable confidence statistics, checked against a numpy batch oracle."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.services.core.profile import PSI_DRIFT_THRESHOLD, profile, psi
from driftline.services.core.windows import (
    BIN_WIDTH,
    MINUTE_MS,
    ConfidenceStats,
    RecentSamples,
    WindowSpec,
    window_start,
)

CLASSES = ["healthy", "contaminated", "cracked", "flashover_damaged"]


def _batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    conf = rng.beta(5, 2, n)
    predicted = [CLASSES[i] for i in rng.integers(0, len(CLASSES), n)]
    times = rng.integers(1_700_000_000_000, 1_700_000_600_000, n)
    return conf, predicted, times


def test_tumbling_bucket_holds_its_event_times() -> None:
    spec = WindowSpec()
    t = 1_700_000_123_456
    start = spec.bucket_of(t)
    assert start % MINUTE_MS == 0
    assert start <= t < start + MINUTE_MS
    assert window_start(start, MINUTE_MS) == start


def test_each_bucket_is_in_ten_hopping_windows_that_contain_it() -> None:
    spec = WindowSpec(bucket_ms=MINUTE_MS, hopping_ms=10 * MINUTE_MS, hop_ms=MINUTE_MS)
    bucket = spec.bucket_of(1_700_000_123_456)
    starts = spec.hopping_starts(bucket)
    assert len(starts) == 10
    for s in starts:
        assert s <= bucket < s + spec.hopping_ms
        assert bucket in spec.buckets_in(s)
    assert spec.trailing_hopping_start(bucket) == starts[0]
    assert list(spec.buckets_in(starts[0]))[-1] == bucket


def test_hopping_windows_with_a_longer_hop() -> None:
    spec = WindowSpec(bucket_ms=MINUTE_MS, hopping_ms=10 * MINUTE_MS, hop_ms=5 * MINUTE_MS)
    bucket = 7 * MINUTE_MS
    assert spec.hopping_starts(bucket) == [0, 5 * MINUTE_MS]
    assert len(spec.buckets_in(0)) == 10


def test_window_spec_rejects_hops_that_buckets_cannot_build() -> None:
    with pytest.raises(ValueError, match="multiple"):
        WindowSpec(bucket_ms=MINUTE_MS, hopping_ms=10 * MINUTE_MS, hop_ms=90_000)


def test_statistics_match_the_numpy_oracle() -> None:
    rng = np.random.default_rng(1)
    conf, predicted, times = _batch(rng, 5000)
    stats = ConfidenceStats()
    stats.add(conf, predicted, times, low_threshold=0.6)
    assert stats.count == 5000
    assert stats.mean == pytest.approx(conf.mean(), abs=1e-6)
    for q in (1, 10, 50, 90, 99):
        assert abs(stats.percentile(q) - np.percentile(conf, q)) <= BIN_WIDTH
    assert stats.low_rate == pytest.approx(np.mean(conf < 0.6))
    expected_mix = {c: predicted.count(c) / 5000 for c in CLASSES}
    assert stats.class_mix() == pytest.approx(expected_mix)
    assert (stats.first_ms, stats.last_ms) == (times.min(), times.max())


def test_merging_batches_equals_one_batch_in_any_order() -> None:
    rng = np.random.default_rng(2)
    conf, predicted, times = _batch(rng, 3000)
    whole = ConfidenceStats()
    whole.add(conf, predicted, times, 0.6)
    parts = []
    for lo, hi in ((0, 1000), (1000, 1700), (1700, 3000)):
        part = ConfidenceStats()
        part.add(conf[lo:hi], predicted[lo:hi], times[lo:hi], 0.6)
        parts.append(part)
    assert ConfidenceStats.merged(parts) == whole
    assert ConfidenceStats.merged(reversed(parts)) == whole
    assert ConfidenceStats.merged(parts).mean == whole.mean  # bit-identical, not approximate


def test_statistics_survive_serialisation() -> None:
    rng = np.random.default_rng(3)
    stats = ConfidenceStats()
    stats.add(*_batch(rng, 100), low_threshold=0.5)
    again = ConfidenceStats.from_bytes(stats.to_bytes())
    assert again == stats
    assert again.percentile(90) == stats.percentile(90)


def test_confidence_edges_and_empty_windows() -> None:
    stats = ConfidenceStats()
    assert (stats.mean, stats.percentile(50), stats.low_rate) == (0.0, 0.0, 0.0)
    stats.add([0.0, 1.0, 1.0, float("nan")], ["a", "b", "b", "a"], [5, 6, 7, 8], 0.5)
    assert stats.hist[0] == 2
    assert stats.hist[-1] == 2
    assert stats.percentile(100) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        stats.add([0.5], ["a", "b"], [1], 0.5)


def test_recent_samples_keep_the_last_span_of_event_time() -> None:
    samples = RecentSamples(span_ms=1000, max_samples=10_000)
    samples.add([0, 100, 200], {"confidence": [0.1, 0.2, 0.3]})
    samples.add([1150, 1200], {"confidence": [0.4, 0.5]})
    assert samples.window() == (200, 1200)
    np.testing.assert_allclose(samples.values("confidence"), [0.3, 0.4, 0.5])
    assert len(samples) == 3


def test_recent_samples_cap_drops_the_oldest_chunks() -> None:
    samples = RecentSamples(span_ms=10**9, max_samples=100)
    for i in range(5):
        samples.add(np.full(60, i), {"x": np.full(60, float(i))})
    assert 100 <= len(samples) < 160
    assert samples.values("x").min() == 3.0


def test_psi_scores_flag_a_shifted_feature_only() -> None:
    rng = np.random.default_rng(4)
    ref_a = profile("a", rng.normal(0, 1, 5000))
    ref_b = profile("b", rng.normal(0, 1, 5000))
    samples = RecentSamples(span_ms=10**9, max_samples=10**6)
    live_a = rng.normal(0, 1, 2000)
    live_b = rng.normal(2, 1, 2000)
    samples.add(np.arange(2000), {"a": live_a, "b": live_b})
    scores = samples.psi_scores([ref_a, ref_b])
    assert scores["a"] == pytest.approx(psi(ref_a, live_a))
    assert scores["a"] < 0.1
    assert scores["b"] > PSI_DRIFT_THRESHOLD
