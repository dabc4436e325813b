"""The simulated fleet: right shape, reproducible, and the classes carry their signatures."""

from __future__ import annotations

import numpy as np

from driftline.schemas.contracts import INSULATOR_CLASSES, SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.services.simulator.fleet import (
    CRACKED,
    FLASHOVER,
    HEALTHY,
    SensorConditions,
    generate_windows,
    labelled_dataset,
)


def test_shape_dtype_and_finiteness() -> None:
    x, y = labelled_dataset(400, seed=1)
    assert x.shape == (400, len(SENSOR_CHANNELS), SENSOR_SAMPLES)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    assert np.bincount(y).tolist() == [100] * len(INSULATOR_CLASSES)


def test_same_seed_same_data() -> None:
    a, ya = labelled_dataset(64, seed=5)
    b, yb = labelled_dataset(64, seed=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)


def test_class_signatures() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    per_class = {c: generate_windows(rng, np.full(n, c, dtype=np.int64)) for c in range(4)}
    discharge = {c: float(np.percentile(w[:, 1], 99)) for c, w in per_class.items()}
    temperature = {c: float(w[:, 2].mean()) for c, w in per_class.items()}
    assert discharge[CRACKED] > 2 * discharge[HEALTHY]
    assert discharge[FLASHOVER] > 2 * discharge[HEALTHY]
    assert temperature[FLASHOVER] > temperature[HEALTHY] + 2


def test_world_conditions_shift_the_inputs() -> None:
    rng = np.random.default_rng(0)
    classes = np.zeros(500, dtype=np.int64)
    wet = generate_windows(rng, classes, SensorConditions(humidity_mean=85.0))
    dry = generate_windows(rng, classes, SensorConditions(humidity_mean=35.0))
    assert wet[:, 3].mean() > dry[:, 3].mean() + 30
    assert wet[:, 0].mean() > dry[:, 0].mean()
