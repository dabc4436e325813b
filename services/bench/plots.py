"""The PNG of `driftline bench inference`: throughput against its limits, and latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_report(report: dict[str, Any], path: Path) -> str | None:
    """Write the figure beside the JSON; None (and nothing written) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = report["pipeline"]
    bars = [
        ("B0 ONNX Runtime", report["B0"]["events_per_s"], "#999999"),
        ("B1 Kafka", report["B1"]["events_per_s"], "#999999"),
        ("L limit", report["L"]["events_per_s"], "#666666"),
        ("hand loop", report["reference"]["plain"]["events_per_s"], "#d95f02"),
        ("hand loop strict", report["reference"]["strict"]["events_per_s"], "#d95f02"),
        ("at-least-once", p["at_least_once_per_s"], "#1b9e77"),
        ("exactly-once", p["exactly_once_per_s"], "#1b9e77"),
        ("naive", p["naive_per_s"], "#7570b3"),
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    left.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    left.invert_yaxis()
    left.set_xlabel("events per second")
    left.set_title(
        f"{report['modality']}: {report['events']} events, {report['partitions']} partitions"
    )
    for i, (_, value, _) in enumerate(bars):
        left.text(value, i, f" {value:,.0f}", va="center", fontsize=8)
    for lat in report["latency"]:
        values = sorted(lat.get("latencies_ms") or [])
        if not values:
            continue
        share = [(i + 1) / len(values) for i in range(len(values))]
        right.plot(values, share, label=f"{lat['load']:.0%} load: p99 {lat['p99_ms']:.1f} ms")
    right.set_xscale("log")
    right.set_xlabel("end-to-end latency, sent to read (ms, log scale)")
    right.set_ylabel("share of events")
    right.set_title("latency distribution, at-least-once")
    right.axvline(25, color="#d95f02", linestyle=":", label="goal p99 25 ms")
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
