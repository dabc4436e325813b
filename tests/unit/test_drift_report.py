"""The drift report shows the fall and the recovery, and says whether the goal was met."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from driftline.services.core.ledger import Ledger
from driftline.services.demo.report import Mark, RunSummary, recovery, write


def synthetic_run() -> Ledger:
    rng = np.random.default_rng(0)
    ledger = Ledger()
    for i in range(3000):
        t = i * 0.1  # 300 s
        version = 1 if t < 200 else 2
        p_right = 0.92 if t < 120 else (0.5 if version == 1 else 0.9)
        ledger.record_sent(f"e{i}", "sensor", "healthy", t)
        ledger.record_result(f"e{i}", version, "healthy" if rng.random() < p_right else "cracked")
    return ledger


def test_recovery_figures_and_files(tmp_path: Path) -> None:
    ledger = synthetic_run()
    marks = [Mark(60, "sensor", "v1 retrained"), Mark(200, "sensor", "v2 serves")]
    fig = recovery(ledger, "sensor", drift_at_s=120, end_s=300, tail_s=60, bucket_s=10, marks=marks)
    assert 0.89 < fig.pre_drift < 0.95
    assert fig.recovered_after_s == 80, "back at the goal from v2's first bucket on"
    assert fig.swaps_until_recovery == 1, "the swap before the drift does not count"
    assert fig.worst_after_drift < 0.65
    assert 0.85 < fig.recovered < 0.95
    assert fig.recovered_ratio >= 0.95
    summary = RunSummary(
        scenario="aging",
        drift_at_s=120,
        seconds=300,
        sent=3000,
        scored=3000,
        lost=0,
        duplicated=0,
        figures=[fig],
        marks=[Mark(200, "sensor", "v2 serves")],
    )
    assert summary.recovered("sensor")
    png, md = write(ledger, summary, ["sensor"], 10, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "lost 0, duplicated 0" in text
    assert "| sensor |" in text
    assert "(yes)" in text
    assert "v2 serves" in text
    assert "| 80 s | 1 |" in text


def test_a_run_that_never_gets_back_says_so() -> None:
    ledger = Ledger()
    for i in range(3000):
        t = i * 0.1
        right = (i % 10) < (9 if t < 120 else 5)
        ledger.record_sent(f"e{i}", "sensor", "healthy", t)
        ledger.record_result(f"e{i}", 1, "healthy" if right else "cracked")
    fig = recovery(ledger, "sensor", drift_at_s=120, end_s=300, tail_s=60, bucket_s=10)
    assert fig.recovered_after_s is None
    assert fig.swaps_until_recovery is None
