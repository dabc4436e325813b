"""`driftline simulate`'s settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from driftline.services.runtime.settings import DriftlineSettings


class SimulatorSettings(DriftlineSettings):
    """`driftline simulate`: a fleet's sensor windows, photos and delayed labels."""

    assets: int = Field(default=50, ge=1, description="Insulators in the fleet")
    rate: float = Field(default=200.0, ge=0, description="Sensor windows per second, whole fleet")
    image_rate: float = Field(default=0.0, ge=0, description="Photos per second, whole fleet")
    count: int | None = Field(
        default=None, ge=1, description="Stop after this many events (windows and photos)"
    )
    seed: int = 7
    fault_fraction: float = Field(default=0.4, ge=0, le=1)
    evolve_per_s: float = Field(
        default=0.0,
        ge=0,
        description="Simulated hours of insulator ageing per real second (0: conditions fixed)",
    )
    label_fraction: float = Field(
        default=0.0, ge=0, le=1, description="Share of events a field inspection labels"
    )
    label_delay_min_s: float = Field(default=2.0, ge=0)
    label_delay_max_s: float = Field(default=10.0, ge=0)
    inspection_fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of labels sent as asset inspections instead of per-event labels",
    )
    inspection_lookback_s: float = Field(
        default=30.0, gt=0, description="How far back before the event an inspection holds"
    )
    scenario: str | None = Field(
        default=None, description="Drift scenario: a built-in name (steady, aging) or a TOML path"
    )
    drift_at_s: float | None = Field(
        default=None, gt=0, description="Move the scenario's first change to this time"
    )
    image_format: Literal["jpeg", "png"] = "jpeg"
