"""The whole loop, shortened: the world drifts, accuracy falls, the trainer retrains on the
delayed labels, consumers swap, and accuracy recovers, with no event lost or duplicated."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.demo import run as drift_demo
from services.demo.config import DemoConfig
from tests.integration.conftest import Endpoints

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def test_drift_is_noticed_retrained_and_recovered(endpoints: Endpoints, tmp_path: Path) -> None:
    cfg = DemoConfig(
        scenario="aging",
        drift_at_s=60,
        duration_s=180,
        rate=100,
        images=False,
        label_fraction=0.5,
        label_delay_s=(1.0, 4.0),
        min_new_labels=300,
        bootstrap_windows=4000,
        epochs=6,
        out_dir=tmp_path / "report",
    )
    lines: list[str] = []
    summary = drift_demo.run(
        cfg, endpoints.bootstrap_servers, endpoints.redis_url, lines.append, live=False
    )
    report = (tmp_path / "report" / "summary.md").read_text()
    assert summary.sent > 15_000
    assert summary.lost == 0, report
    assert summary.duplicated == 0, report
    (fig,) = summary.figures
    assert fig.pre_drift > 0.85, report
    assert fig.worst_after_drift < 0.8 * fig.pre_drift, f"the drift should hurt\n{report}"
    assert summary.recovered("sensor"), f"accuracy did not recover to 95%\n{report}"
    assert any(m.kind == "swap" for m in summary.marks), report
    assert (tmp_path / "report" / "accuracy.png").stat().st_size > 10_000
