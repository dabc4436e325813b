"""Profiles and PSI: stable data scores near zero, shifted data above the drift threshold."""

from __future__ import annotations

import numpy as np

from driftline.services.core.profile import PSI_DRIFT_THRESHOLD, profile, psi, sensor_summaries


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = profile("x", rng.normal(0, 1, 20000))
    assert abs(ref.fractions.sum() - 1) < 1e-12
    assert len(ref.fractions) == len(ref.edges) + 1 == 10
    assert psi(ref, rng.normal(0, 1, 5000)) < 0.02
    assert psi(ref, rng.normal(1.0, 1, 5000)) > PSI_DRIFT_THRESHOLD


def test_psi_matches_its_definition() -> None:
    ref = profile("x", np.arange(100.0), bins=4)
    live = np.array([0.0, 1.0, 2.0, 99.0])
    counts = np.array([3, 0, 0, 1]) / 4
    expected_ref = ref.fractions
    clipped = np.clip(counts, 1e-4, None)
    want = np.sum((clipped - expected_ref) * np.log(clipped / expected_ref))
    assert abs(psi(ref, live) - want) < 1e-12


def test_sensor_summaries_shape_and_names() -> None:
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    out = sensor_summaries(x, ["a", "b", "c"])
    assert set(out) == {f"{c}.{s}" for c in "abc" for s in ("mean", "std", "max")}
    assert out["b.max"].tolist() == [7.0, 19.0]
