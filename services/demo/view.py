"""The live terminal view of a demo run: a block of lines redrawn in place once a second."""

from __future__ import annotations

import time
from typing import IO

from driftline.services.demo.config import DemoConfig
from driftline.services.demo.processes import Samples, sample_value
from driftline.services.demo.watch import Watch
from driftline.services.runtime import metrics as m

MIN_LABELS_SHOWN = 30  # a bucket with fewer labels is not shown as live accuracy


class LiveView:
    """A block of lines redrawn in place once a second."""

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.lines = 0

    def draw(self, lines: list[str]) -> None:
        if not self.enabled:
            return
        if self.lines:
            self.stream.write(f"\x1b[{self.lines}F")
        for line in lines:
            self.stream.write("\x1b[2K" + line + "\n")
        self.stream.flush()
        self.lines = len(lines)


def rates_text(cfg: DemoConfig) -> str:
    photos = cfg.image_rate if cfg.images else 0.0
    low, high = cfg.label_delay_s
    return (
        f"{cfg.rate:.0f} windows/s, {photos:.0f} photos/s, "
        f"{cfg.label_fraction:.0%} labelled after {low:.0f}-{high:.0f} s"
    )


def live_accuracy_text(
    feats: Samples, model: str, version: int, bucket_s: float, now_s: float | None = None
) -> str:
    """The features app's live accuracy for one version: the newest event-time bucket with
    enough labels, how old its events are, coverage and delay; the confidence estimate beside.

    A bucket's age is said outright, so a backlog of old labels is never read as the present.
    """
    now_s = time.time() if now_s is None else now_s
    sel = {"model": model, "version": str(version)}
    parts = []
    acc = sample_value(feats, m.LIVE_ACCURACY, **sel)
    labels = sample_value(feats, m.LIVE_ACCURACY_LABELS, **sel) or 0
    start = sample_value(feats, m.LIVE_ACCURACY_BUCKET_START, basis="labels", **sel)
    if acc is not None and start is not None and labels >= MIN_LABELS_SHOWN:
        coverage = sample_value(feats, m.LIVE_ACCURACY_COVERAGE, **sel)
        delay = sample_value(feats, m.LIVE_ACCURACY_LABEL_DELAY, **sel)
        parts.append(
            f"accuracy (labels, events {_ago(now_s, start, bucket_s)} s ago) {acc:.3f}"
            + (f", coverage {coverage:.0%}" if coverage is not None else "")
            + (f", delay {delay:.0f} s" if delay is not None else "")
        )
    else:
        parts.append(f"accuracy (labels) waiting for {MIN_LABELS_SHOWN} labels in a bucket")
    est = sample_value(feats, m.LIVE_ACCURACY_ESTIMATE, **sel)
    est_start = sample_value(feats, m.LIVE_ACCURACY_BUCKET_START, basis="estimate", **sel)
    if est is not None and est_start is not None:
        parts.append(
            f"estimate from confidence (events {_ago(now_s, est_start, bucket_s)} s ago) {est:.3f}"
        )
    return "   ".join(parts)


def _ago(now_s: float, start_s: float, bucket_s: float) -> str:
    newest = max(0.0, now_s - start_s - bucket_s)
    return f"{newest:.0f}-{max(0.0, now_s - start_s):.0f}"


def status_lines(
    cfg: DemoConfig, watch: Watch, phase: str, scrapes: dict[str, Samples]
) -> list[str]:
    t = watch.t()
    with watch.lock:
        ledger = watch.ledger
        sent, scored = len(ledger.sent), len(ledger.seen)
        lost_so_far = sum(
            1 for e, (_, _, ts) in ledger.sent.items() if ts < t - 10 and e not in ledger.seen
        )
        dup = ledger.duplicated
        lines = [
            f"driftline demo  t={t:5.0f}s/{cfg.duration_s:.0f}s  scenario {cfg.scenario}  "
            f"drift at {cfg.drift_at_s:.0f}s  phase: {phase}",
            f"  events  sent {sent:,}  scored {scored:,}  not yet scored (>10s old) {lost_so_far}  "
            f"duplicated {dup}",
        ]
        for modality in cfg.modalities:
            acc, n = ledger.accuracy(modality, max(0.0, t - 30), t)
            versions = [v for (m, v) in watch.first_seen if m == modality]
            serving = max(versions) if versions else 0
            feats = scrapes.get("features", {})
            model = f"insulator-{modality}"
            drift = sample_value(feats, "driftline_drift_score", model=model)
            lines.append(
                f"  {modality:6}  serving v{serving}   accuracy (last 30 s, vs truth) "
                + (f"{acc:.3f} of {n}" if n else "-")
                + (f"   drift score {drift:.2f}" if drift is not None else "")
            )
            if serving:
                lines.append(
                    "          live: " + live_accuracy_text(feats, model, serving, cfg.bucket_s)
                )
        trainer = scrapes.get("trainer", {})
        trainings = sample_value(trainer, "driftline_trainings_total")
        alerts = sample_value(scrapes.get("alerts", {}), "driftline_alerts_raised_total")
        recent = list(watch.marks)[-3:]
    lines.append(
        f"  trainer trainings {trainings or 0:.0f}   alerts raised {alerts or 0:.0f}   "
        + (
            "; ".join(f"{m.t_s:.0f}s {m.modality} {m.text}" for m in recent)
            or "no new versions yet"
        )
    )
    return lines
