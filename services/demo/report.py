"""The drift-recovery report: a PNG of accuracy over time per model version, and a summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from driftline.services.core.ledger import Ledger

RECOVERY_GOAL = 0.95


@dataclass(frozen=True)
class Mark:
    """Something that happened during the run; swaps are drawn with their label, rejected
    challengers as short ticks, and everything is listed in the summary."""

    t_s: float
    modality: str
    text: str
    kind: str = "swap"  # swap | rejected | info


@dataclass
class RecoveryFigures:
    """What the run shows, per modality."""

    modality: str
    pre_drift: float
    worst_after_drift: float
    recovered: float
    recovered_ratio: float
    events: int
    # Seconds from the drift to the first bucket back at the goal (None: never), and how many
    # new versions started serving between the drift and then.
    recovered_after_s: float | None = None
    swaps_until_recovery: int | None = None


@dataclass
class RunSummary:
    scenario: str
    drift_at_s: float | None
    seconds: float
    sent: int
    scored: int
    lost: int
    duplicated: int
    figures: list[RecoveryFigures] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)

    def recovered(self, modality: str) -> bool:
        for f in self.figures:
            if f.modality == modality:
                return f.recovered_ratio >= RECOVERY_GOAL
        return False


def recovery(
    ledger: Ledger,
    modality: str,
    drift_at_s: float | None,
    end_s: float,
    tail_s: float,
    bucket_s: float,
    marks: Sequence[Mark] = (),
) -> RecoveryFigures:
    """Pre-drift accuracy, the worst bucket after the drift, and the accuracy of the last tail_s."""
    drift = drift_at_s if drift_at_s is not None else end_s
    pre, n_pre = ledger.accuracy(modality, 0.0, drift)
    after = [
        p.accuracy
        for p in ledger.series(bucket_s)
        if p.modality == modality and p.t_s >= drift and p.count >= 10
    ]
    tail, n_tail = ledger.accuracy(modality, max(drift, end_s - tail_s), end_s)
    back = recovered_at(ledger, modality, drift, end_s, bucket_s, RECOVERY_GOAL * pre)
    swaps = None
    if back is not None:
        swaps = sum(
            1
            for m in marks
            # up to the end of the first recovered bucket: the swap that brought it back
            if m.modality == modality and m.kind == "swap" and drift <= m.t_s <= back + bucket_s
        )
    return RecoveryFigures(
        modality=modality,
        pre_drift=pre,
        worst_after_drift=min(after) if after else float("nan"),
        recovered=tail,
        recovered_ratio=tail / pre if pre and not math.isnan(pre) and not math.isnan(tail) else 0.0,
        events=n_pre + n_tail,
        recovered_after_s=back - drift if back is not None else None,
        swaps_until_recovery=swaps,
    )


def recovered_at(
    ledger: Ledger, modality: str, drift_s: float, end_s: float, bucket_s: float, goal: float
) -> float | None:
    """Start of the first bucket after the drift's worst from which accuracy is back at goal.

    That bucket reaches the goal, and so does the accuracy over everything from it to the end
    of the run, so a lucky bucket in the middle of the dip does not count as recovery.
    """
    if math.isnan(goal) or goal <= 0:
        return None
    buckets: list[tuple[float, float]] = []
    t = drift_s
    while t < end_s:
        acc, n = ledger.accuracy(modality, t, min(t + bucket_s, end_s))
        if n >= 10:
            buckets.append((t, acc))
        t += bucket_s
    if not buckets:
        return None
    worst = min(range(len(buckets)), key=lambda i: buckets[i][1])
    for start, acc in buckets[worst:]:
        if acc >= goal and ledger.accuracy(modality, start, end_s)[0] >= goal:
            return start
    return None


def plot(
    ledger: Ledger, summary: RunSummary, modalities: list[str], bucket_s: float, path: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(modalities), 1, figsize=(12, 3.6 * len(modalities)), squeeze=False)
    points = ledger.series(bucket_s)
    for ax, modality in zip(axes[:, 0], modalities, strict=True):
        mine = [p for p in points if p.modality == modality and p.count >= 3]
        for version in sorted({p.version for p in mine}):
            xs = [p.t_s + bucket_s / 2 for p in mine if p.version == version]
            ys = [p.accuracy for p in mine if p.version == version]
            (line,) = ax.plot(
                xs, ys, marker="o", markersize=3, linewidth=1.5, label=f"model v{version}"
            )
            est = [
                (p.t_s + bucket_s / 2, p.confidence)
                for p in mine
                if p.version == version and p.confidence is not None
            ]
            if est:  # the estimate from confidence alone, drawn beside the true accuracy
                ax.plot(
                    [x for x, _ in est],
                    [y for _, y in est],
                    linestyle="--",
                    linewidth=1,
                    color=line.get_color(),
                    alpha=0.7,
                )
        if any(p.confidence is not None for p in mine):
            ax.plot([], [], linestyle="--", color="grey", label="estimate (mean confidence)")
        if summary.drift_at_s is not None:
            ax.axvline(summary.drift_at_s, color="crimson", linestyle="--", linewidth=1.2)
            ax.text(summary.drift_at_s, 0.02, " drift", color="crimson", va="bottom")
        for mark in summary.marks:
            if mark.modality != modality:
                continue
            if mark.kind == "swap":
                ax.axvline(mark.t_s, color="grey", linestyle=":", linewidth=1)
                ax.text(mark.t_s, 0.03, f" {mark.text}", color="dimgrey", fontsize=8, rotation=90)
            elif mark.kind == "rejected":
                ax.plot([mark.t_s], [1.0], marker="v", color="darkorange", markersize=6)
        if any(m.kind == "rejected" and m.modality == modality for m in summary.marks):
            ax.plot([], [], "v", color="darkorange", label="challenger rejected by the gate")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, max(summary.seconds, 1))
        ax.set_ylabel(f"{modality} accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    axes[-1, 0].set_xlabel(
        f"seconds since start (events bucketed by {bucket_s:.0f} s of send time)"
    )
    fig.suptitle(f"driftline: live accuracy under drift ({summary.scenario})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(summary: RunSummary, png_name: str) -> str:
    lines = [
        f"# driftline drift-recovery run: {summary.scenario}",
        "",
        f"![accuracy over time]({png_name})",
        "",
        f"- duration: {summary.seconds:.0f} s; drift at "
        + (f"{summary.drift_at_s:.0f} s" if summary.drift_at_s is not None else "none"),
        f"- events sent {summary.sent:,}, scored {summary.scored:,}, "
        f"lost {summary.lost}, duplicated {summary.duplicated} (counted by event id)",
        "",
        "| modality | accuracy before drift | worst after drift | accuracy at the end | "
        f"recovered (goal >= {RECOVERY_GOAL:.0%}) | back at the goal after the drift | "
        "new versions until then |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in summary.figures:
        ok = "yes" if f.recovered_ratio >= RECOVERY_GOAL else "no"
        back = f"{f.recovered_after_s:.0f} s" if f.recovered_after_s is not None else "never"
        swaps = str(f.swaps_until_recovery) if f.swaps_until_recovery is not None else "-"
        lines.append(
            f"| {f.modality} | {f.pre_drift:.3f} | {f.worst_after_drift:.3f} | {f.recovered:.3f} | "
            f"{f.recovered_ratio:.0%} ({ok}) | {back} | {swaps} |"
        )
    if summary.marks:
        lines += ["", "## Events", ""]
        lines += [
            f"- {m.t_s:6.1f} s  {m.modality}: {m.text}"
            for m in sorted(summary.marks, key=lambda m: m.t_s)
        ]
    if summary.extra:
        lines += ["", "## Figures", ""]
        lines += [f"- {k}: {v}" for k, v in summary.extra.items()]
    return "\n".join(lines) + "\n"


def write(
    ledger: Ledger, summary: RunSummary, modalities: list[str], bucket_s: float, out_dir: Path
) -> tuple[Path, Path]:
    png = plot(ledger, summary, modalities, bucket_s, out_dir / "accuracy.png")
    md = out_dir / "summary.md"
    md.write_text(markdown(summary, png.name), encoding="utf-8")
    return png, md
