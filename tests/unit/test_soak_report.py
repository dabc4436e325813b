"""The soak's verdict: memory flat after warm-up, lag bounded, nothing lost or duplicated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from driftline.services.bench.soakreport import (
    Bounds,
    Interval,
    Sample,
    intervals,
    summarize,
    table,
    write,
)

BOUNDS = Bounds(warmup_s=20.0)


def _samples(rss_end: float, lag_end: int) -> list[Sample]:
    # Warm-up climbs from 100 to 400 MiB; afterwards the service should stay near 400.
    rss = [100.0, 400.0, 405.0, 410.0, rss_end]
    lag = [5000, 300, 200, 100, lag_end]
    return [
        Sample(t_s=10.0 * (i + 1), rss_mib={"infer-sensor": r}, lag={"g": n}, sent=0, scored=0)
        for i, (r, n) in enumerate(zip(rss, lag, strict=True))
    ]


def _judge(samples: list[Sample], lost: int = 0, duplicated: int = 0) -> list[str]:
    return summarize(samples, {"g": 0}, [], BOUNDS, 50.0, lost, duplicated, []).failures


def test_growth_during_warmup_is_not_counted_but_growth_after_it_is() -> None:
    assert _judge(_samples(rss_end=440.0, lag_end=50)) == []  # +40 MiB: under 50 MiB
    failures = _judge(_samples(rss_end=460.0, lag_end=50))  # +60: over max(40, 50)
    assert failures == ["infer-sensor: memory grew +60 MiB after warm-up"]


def test_a_lag_still_high_at_the_end_fails_but_a_drained_peak_does_not() -> None:
    # The limit is 10 s of input, at least 1000 records: 5000 early on is fine.
    assert _judge(_samples(rss_end=400.0, lag_end=999)) == []
    samples = _samples(rss_end=400.0, lag_end=1001)
    samples[-1].lag_by_topic = {"g": {"inference.results": 990, "feedback.labels": 11}}
    assert _judge(samples) == [
        "g: lag 1,001 at the end of the stream (limit 1,000, 990 on inference.results)"
    ]


def test_lost_or_duplicated_results_fail_the_verdict_and_say_how_many() -> None:
    failures = _judge(_samples(400.0, 0), lost=3, duplicated=2)
    assert failures == ["3 events lost", "2 results duplicated"]
    summary = summarize(_samples(400.0, 0), None, [], BOUNDS, 50.0, 3, 2, [])
    assert "verdict: FAIL: 3 events lost; 2 results duplicated" in table(summary)


def test_p99_per_interval_counts_each_result_in_the_interval_it_was_scored() -> None:
    scored = np.array([1.0, 2.0, 3.0, 12.0, 25.0])
    latency = np.array([10.0, 20.0, 30.0, 500.0, 7.0])
    got = intervals(scored, latency, 10.0, 30.0)
    assert [i.results for i in got] == [3, 1, 1]
    assert got[0].p99_ms == float(np.percentile([10.0, 20.0, 30.0], 99))
    assert got[1].p99_ms == 500.0
    summary = summarize(_samples(400.0, 0), None, got, BOUNDS, 50.0, 0, 0, [])
    assert summary.p99_max_ms == 500.0
    assert summary.p99_last_ms == 7.0
    assert table(summary).endswith("verdict: PASS (memory flat, lag bounded, 0 lost, 0 duplicated)")


def test_the_report_holds_every_series_and_a_png(tmp_path: Path) -> None:
    samples = _samples(400.0, 0)
    lat = [Interval(0.0, 3, 12.0, 30.0), Interval(10.0, 0, None, None)]
    summary = summarize(samples, None, lat, BOUNDS, 50.0, 0, 0, ["trainer stopped (exit 1)"])
    json_path, png = write(tmp_path, {"minutes": 1}, samples, lat, summary)
    doc = json.loads(json_path.read_text())
    assert [s["rss_mib"]["infer-sensor"] for s in doc["samples"]][-1] == 400.0
    assert doc["summary"]["passed"] is False
    assert doc["summary"]["failures"] == ["trainer stopped (exit 1)"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
