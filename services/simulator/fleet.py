"""Synthetic insulator sensor windows: one vectorised generator, class signatures plus noise.

Channels (schemas.contracts.SENSOR_CHANNELS), one sample a second over 64 s:
- leakage current (mA): a humidity-driven baseline; contamination raises it and adds surges,
  cracks add intermittent steps, flashover damage carries a high, bursty current;
- partial-discharge intensity (pC): low noise when healthy; cracks fire frequent pulses,
  flashover damage fires large bursts, contamination a few moderate ones;
- temperature (deg C): ambient with a slow trend; damaged discs run warmer;
- relative humidity (%): weather, shared by every class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from driftline.schemas.contracts import INSULATOR_CLASSES, SENSOR_CHANNELS, SENSOR_SAMPLES

HEALTHY, CONTAMINATED, CRACKED, FLASHOVER = range(len(INSULATOR_CLASSES))


@dataclass(frozen=True)
class SensorConditions:
    """World parameters a drift scenario moves; the defaults are the training world."""

    humidity_mean: float = 60.0
    temperature_mean: float = 18.0
    leakage_gain: float = 1.0
    discharge_gain: float = 1.0
    noise_scale: float = 1.0


def generate_windows(
    rng: np.random.Generator,
    classes: npt.NDArray[np.int64],
    world: SensorConditions = SensorConditions(),
) -> npt.NDArray[np.float32]:
    """Windows [len(classes), 4, 64] float32 for insulators in the given condition classes."""
    n = len(classes)
    s = SENSOR_SAMPLES
    t = np.linspace(0.0, 1.0, s, dtype=np.float64)[None, :]
    cls = classes[:, None]
    noise = world.noise_scale
    # How far a fault has progressed: early faults look almost healthy, so classes overlap.
    severity = rng.beta(2.0, 2.0, (n, 1)) * 1.6

    humidity = np.clip(
        world.humidity_mean
        + rng.normal(0, 12, (n, 1))
        + rng.normal(0, 2, (n, 1)) * np.sin(2 * np.pi * (t + rng.random((n, 1))))
        + rng.normal(0, 0.8 * noise, (n, s)),
        5,
        100,
    )
    temperature = (
        world.temperature_mean
        + rng.normal(0, 4, (n, 1))
        + rng.normal(0, 0.5, (n, 1)) * t * 4
        + severity * np.where(cls == FLASHOVER, 5.0, np.where(cls == CRACKED, 1.5, 0.0))
        + rng.normal(0, 0.3 * noise, (n, s))
    )

    wet = (humidity - 40.0).clip(0) / 60.0  # 0 when dry, 1 at saturation
    leakage = 0.35 + 0.4 * wet + rng.normal(0, 0.05 * noise, (n, s))
    contaminated = cls == CONTAMINATED
    leakage = leakage + contaminated * severity * (0.8 * wet + 0.3)
    surges = rng.random((n, s)) < 0.08
    leakage = leakage + contaminated * severity * surges * rng.exponential(1.0, (n, s))
    steps = (rng.random((n, s)) < 0.05) & (cls == CRACKED)
    leakage = leakage + np.cumsum(steps, axis=1).clip(0, 3) * 0.15 * severity * (cls == CRACKED)
    flash = cls == FLASHOVER
    leakage = leakage + flash * severity * (0.8 + rng.exponential(0.8, (n, s)))
    leakage = leakage * world.leakage_gain

    discharge = np.abs(rng.normal(4.0, 1.5 * noise, (n, s)))
    pulse_rate = np.select(
        [cls == CRACKED, cls == FLASHOVER, cls == CONTAMINATED], [0.10, 0.06, 0.03], 0.015
    )
    pulse_size = np.select(
        [cls == CRACKED, cls == FLASHOVER, cls == CONTAMINATED], [60.0, 150.0, 25.0], 12.0
    )
    pulses = rng.random((n, s)) < pulse_rate * np.where(cls == HEALTHY, 1.0, severity)
    discharge = discharge + pulses * rng.exponential(1.0, (n, s)) * pulse_size
    discharge = discharge * world.discharge_gain

    out = np.stack([leakage, discharge, temperature, humidity], axis=1)
    assert out.shape == (n, len(SENSOR_CHANNELS), s)
    return out.astype(np.float32)


def draw_classes(
    rng: np.random.Generator, n: int, fault_fraction: float = 0.4
) -> npt.NDArray[np.int64]:
    """Condition classes: healthy with probability 1 - fault_fraction, faults evenly otherwise."""
    faulty = rng.random(n) < fault_fraction
    fault = rng.integers(1, len(INSULATOR_CLASSES), n)
    return np.where(faulty, fault, HEALTHY).astype(np.int64)


def labelled_dataset(
    n: int, seed: int, world: SensorConditions = SensorConditions()
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """n windows with balanced classes, for bootstrap training and tests."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.arange(n) % len(INSULATOR_CLASSES)).astype(np.int64)
    return generate_windows(rng, classes, world), classes


# Per-hour chances that an insulator's condition moves on, from row to column:
# dirt builds up and rain washes it off; cracks grow; a cracked or dirty disc may flash over.
TRANSITIONS_PER_HOUR = np.array(
    [
        [0.0, 0.30, 0.05, 0.0],  # healthy -> contaminated, cracked
        [0.40, 0.0, 0.0, 0.05],  # contaminated -> healthy (washed), flashover
        [0.0, 0.0, 0.0, 0.10],  # cracked -> flashover
        [0.0, 0.0, 0.0, 0.0],  # flashover damage stays until replaced
    ]
)


class Fleet:
    """N insulators whose conditions evolve over (simulated) time."""

    def __init__(self, rng: np.random.Generator, assets: int, fault_fraction: float) -> None:
        self.rng = rng
        self.ids = [f"insulator-{i:05d}" for i in range(assets)]
        self.conditions = draw_classes(rng, assets, fault_fraction)

    def evolve(self, hours: float) -> int:
        """Advance every insulator by `hours`; returns how many changed condition."""
        if hours <= 0:
            return 0
        chances = 1.0 - np.exp(-TRANSITIONS_PER_HOUR[self.conditions] * hours)
        leave = self.rng.random(len(self.conditions)) < chances.sum(axis=1)
        if not leave.any():
            return 0
        rows = chances[leave]
        cumulative = np.cumsum(rows / rows.sum(axis=1, keepdims=True), axis=1)
        draws = self.rng.random(len(rows))[:, None]
        self.conditions[leave] = (draws > cumulative).sum(axis=1)
        return int(leave.sum())
