"""The soak's figures: series sampled every interval, judged flat/bounded, tabled and plotted.

Pure apart from `plot` (matplotlib, imported when called) and `write` (files): the judgement
of a run is a function of its samples, so it is tested without a stack.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MIB = 1024 * 1024


@dataclass(frozen=True)
class Bounds:
    """What the verdict calls flat and bounded.

    Memory is flat when a service's resident memory at the end is at most
    max(grow_fraction x its value at the end of warm-up, grow_mib) above that value: the
    warm-up (imports, first model load, caches filling) is left out. Lag is bounded when every
    group's lag at the last sample of the stream is at most lag_seconds of the input rate
    (never less than min_lag events).
    """

    warmup_s: float
    grow_fraction: float = 0.10
    grow_mib: float = 50.0
    lag_seconds: float = 10.0
    min_lag: int = 1000

    def lag_limit(self, events_per_s: float) -> int:
        return max(self.min_lag, round(self.lag_seconds * events_per_s))

    def text(self, events_per_s: float) -> str:
        return (
            f"memory flat: growth after {self.warmup_s:.0f} s of warm-up <= "
            f"max({self.grow_fraction:.0%}, {self.grow_mib:.0f} MiB); lag bounded: every group "
            f"<= {self.lag_limit(events_per_s):,} events at the end of the stream"
        )


@dataclass
class Sample:
    """One sampling instant: seconds since the stream started, and what was read then."""

    t_s: float
    rss_mib: dict[str, float]
    lag: dict[str, int]  # per group, summed over its topics
    sent: int
    scored: int
    lag_by_topic: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Interval:
    """End-to-end latency (event time to scored time) of the results scored in one interval."""

    t_s: float  # interval start, seconds since the stream started
    results: int
    p50_ms: float | None
    p99_ms: float | None


def intervals(
    scored_at_s: np.ndarray, latency_ms: np.ndarray, every_s: float, end_s: float
) -> list[Interval]:
    """p50 and p99 of the results scored in each [k*every_s, (k+1)*every_s) up to end_s."""
    out = []
    k = 0
    while k * every_s < end_s:
        lo, hi = k * every_s, (k + 1) * every_s
        mine = latency_ms[(scored_at_s >= lo) & (scored_at_s < hi)]
        if mine.size:
            p50, p99 = (float(v) for v in np.percentile(mine, [50, 99]))
            out.append(Interval(lo, int(mine.size), p50, p99))
        else:
            out.append(Interval(lo, 0, None, None))
        k += 1
    return out


@dataclass
class Memory:
    service: str
    start_mib: float  # at the end of warm-up
    end_mib: float
    peak_mib: float
    limit_mib: float  # the growth allowed
    flat: bool


@dataclass
class Lag:
    group: str
    max: int
    final: int  # last sample of the stream
    drained: int | None  # after the stream stopped and results settled
    bounded: bool


@dataclass
class Summary:
    seconds: float
    sent: int
    scored: int
    lost: int
    duplicated: int
    memory: list[Memory]
    lag: list[Lag]
    p99_max_ms: float | None
    p99_last_ms: float | None
    bounds: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def summarize(
    samples: list[Sample],
    drained: dict[str, int] | None,
    lat: list[Interval],
    bounds: Bounds,
    events_per_s: float,
    lost: int,
    duplicated: int,
    problems: list[str],
) -> Summary:
    """Judge a run: memory flat, lag bounded, nothing lost or duplicated, nothing died."""
    failures = list(problems)
    memory = []
    if samples:
        after = [s for s in samples if s.t_s >= bounds.warmup_s] or samples[-1:]
        for service in samples[0].rss_mib:
            start = after[0].rss_mib.get(service, math.nan)
            end = samples[-1].rss_mib.get(service, math.nan)
            peak = max(s.rss_mib.get(service, 0.0) for s in samples)
            limit = max(bounds.grow_fraction * start, bounds.grow_mib)
            flat = not math.isnan(start) and not math.isnan(end) and end - start <= limit
            memory.append(Memory(service, start, end, peak, limit, flat))
            if not flat:
                failures.append(f"{service}: memory grew {end - start:+.0f} MiB after warm-up")
    limit = bounds.lag_limit(events_per_s)
    lags = []
    for group in sorted({g for s in samples for g in s.lag}):
        seen = [s.lag[group] for s in samples if group in s.lag]
        final = seen[-1]
        ok = final <= limit
        lags.append(Lag(group, max(seen), final, (drained or {}).get(group), ok))
        if not ok:
            topics = samples[-1].lag_by_topic.get(group, {})
            most = max(topics.items(), key=lambda kv: kv[1], default=None)
            where = f", {most[1]:,} on {most[0]}" if most else ""
            failures.append(
                f"{group}: lag {final:,} at the end of the stream (limit {limit:,}{where})"
            )
    if not samples:
        failures.append("no samples: the stream ended before the first sampling interval")
    if lost:
        failures.append(f"{lost:,} events lost")
    if duplicated:
        failures.append(f"{duplicated:,} results duplicated")
    p99s = [i.p99_ms for i in lat if i.p99_ms is not None]
    return Summary(
        seconds=samples[-1].t_s if samples else 0.0,
        sent=samples[-1].sent if samples else 0,
        scored=samples[-1].scored if samples else 0,
        lost=lost,
        duplicated=duplicated,
        memory=memory,
        lag=lags,
        p99_max_ms=max(p99s) if p99s else None,
        p99_last_ms=p99s[-1] if p99s else None,
        bounds=bounds.text(events_per_s),
        failures=failures,
    )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f} ms"


def table(s: Summary) -> str:
    """The summary as text: memory per service, lag per group, p99, counts, the verdict."""
    lines = [f"soak: {s.seconds:.0f} s streamed, {s.sent:,} events sent, {s.scored:,} scored", ""]
    lines.append(f"{'service':<16}{'start MiB':>10}{'end MiB':>10}{'peak MiB':>10}{'growth':>9}")
    for m in s.memory:
        mark = "flat" if m.flat else f"GREW (limit +{m.limit_mib:.0f})"
        lines.append(
            f"{m.service:<16}{m.start_mib:>10.0f}{m.end_mib:>10.0f}{m.peak_mib:>10.0f}"
            f"{m.end_mib - m.start_mib:>+9.0f}  {mark}"
        )
    lines += ["", f"{'consumer group':<34}{'lag max':>10}{'final':>10}{'drained':>10}"]
    for g in s.lag:
        drained = "-" if g.drained is None else f"{g.drained:,}"
        mark = "bounded" if g.bounded else "UNBOUNDED"
        lines.append(f"{g.group:<34}{g.max:>10,}{g.final:>10,}{drained:>10}  {mark}")
    lines += [
        "",
        f"end-to-end p99 per 10 s interval: max {_ms(s.p99_max_ms)}, last {_ms(s.p99_last_ms)}",
        f"results by event id (read_committed): {s.lost:,} lost, {s.duplicated:,} duplicated",
        f"bounds: {s.bounds}",
    ]
    if s.passed:
        lines.append("verdict: PASS (memory flat, lag bounded, 0 lost, 0 duplicated)")
    else:
        lines.append("verdict: FAIL: " + "; ".join(s.failures))
    return "\n".join(lines)


def write(
    out_dir: Path,
    config: dict[str, Any],
    samples: list[Sample],
    lat: list[Interval],
    summary: Summary,
) -> tuple[Path, Path]:
    """soak.json (every series and the summary) and soak.png; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "config": config,
        "samples": [asdict(s) for s in samples],
        "latency_intervals": [asdict(i) for i in lat],
        "summary": {**asdict(summary), "passed": summary.passed},
    }
    path = out_dir / "soak.json"
    path.write_text(json.dumps(doc, indent=2))
    return path, plot(samples, lat, out_dir / "soak.png")


def plot(samples: list[Sample], lat: list[Interval], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, lag, p99) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    ts = [s.t_s for s in samples]
    for service in samples[0].rss_mib if samples else []:
        mem.plot(ts, [s.rss_mib.get(service, math.nan) for s in samples], label=service)
    mem.set_ylabel("resident memory (MiB)")
    mem.set_title("resident memory per service (VmRSS)")
    for group in sorted({g for s in samples for g in s.lag}):
        lag.plot(ts, [s.lag.get(group, math.nan) for s in samples], label=group)
    lag.set_ylabel("lag (records)")
    lag.set_title("consumer lag per group (committed vs last stable offset)")
    xs = [i.t_s + (lat[1].t_s - lat[0].t_s if len(lat) > 1 else 0) for i in lat]
    p99.plot(xs, [math.nan if i.p99_ms is None else i.p99_ms for i in lat], "o-", label="p99")
    p99.plot(xs, [math.nan if i.p50_ms is None else i.p50_ms for i in lat], ".--", label="p50")
    p99.set_ylabel("event time to scored (ms)")
    p99.set_title("end-to-end latency of the results scored in each interval")
    p99.set_xlabel("seconds since the stream started")
    for ax in (mem, lag, p99):
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
