"""What a demo run does: scenario, rates, labels, trainer thresholds, duration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoConfig:
    scenario: str = "aging"
    drift_at_s: float = 120.0
    duration_s: float = 360.0
    rate: float = 100.0
    image_rate: float = 10.0
    images: bool = True
    assets: int = 50
    label_fraction: float = 0.5
    label_delay_s: tuple[float, float] = (1.0, 5.0)
    bucket_s: float = 10.0
    tail_s: float = 60.0
    # Label-driven retrains besides the drift response: the demo labels 50 windows a second,
    # far faster than a field does, so a small threshold would retrain without a pause.
    min_new_labels: int = 3000
    max_examples: int = 3000
    epochs: int = 8
    bootstrap_windows: int = 8000
    bootstrap_images: int = 8000
    seed: int = 7
    out_dir: Path | None = None

    @property
    def modalities(self) -> list[str]:
        return ["sensor", "image"] if self.images else ["sensor"]
