"""Read one asset's features from Redis (one pipelined round trip) and print them readably."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from driftline.services.features.accuracy import AccuracyView, bucket_hash_key, bucket_starts
from driftline.services.features.store import ACCURACY_KEY, ASSET_KEY, DRIFT_KEY

WINDOW_COLUMNS = (
    ("count", "count", 7),
    ("confidence_mean", "mean", 6),
    ("confidence_p50", "p50", 6),
    ("confidence_p90", "p90", 6),
    ("confidence_p99", "p99", 6),
    ("low_confidence_rate", "low", 6),
)
ACCURACY_BUCKETS_READ = 48  # event-time buckets read per version (newest first)
ACCURACY_BUCKETS_SHOWN = 6


@dataclass
class AssetFeatures:
    """The freshest windows of an asset per model version, with accuracy and drift beside."""

    asset_id: str
    # (model, version) -> window name -> feature -> text
    windows: dict[tuple[str, int], dict[str, dict[str, str]]] = field(default_factory=dict)
    accuracy: dict[tuple[str, int], AccuracyView] = field(default_factory=dict)
    drift: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.windows


def parse_asset_hash(asset_id: str, fields: dict[str, str]) -> AssetFeatures:
    """Group "{model}:v{version}:{window}:{feature}" fields by version and window."""
    grouped: dict[tuple[str, int], dict[str, dict[str, str]]] = defaultdict(dict)
    for name, value in fields.items():
        parts = name.rsplit(":", 3)
        if len(parts) != 4 or not parts[1].startswith("v"):
            continue
        model, version, window, feature = parts
        grouped[(model, int(version[1:]))].setdefault(window, {})[feature] = value
    return AssetFeatures(asset_id, dict(grouped))


def read_asset(client: Any, prefix: str, asset_id: str) -> AssetFeatures:
    """The asset hash; its versions' accuracy index and drift hashes in one pipeline; then
    the versions' newest event-time accuracy buckets in one more."""
    raw: dict[Any, Any] = client.hgetall(ASSET_KEY.format(prefix=prefix, asset=asset_id))
    features = parse_asset_hash(asset_id, {_text(k): _text(v) for k, v in raw.items()})
    versions = sorted(features.windows)
    if versions:
        pipe = client.pipeline(transaction=False)
        for model, version in versions:
            pipe.hgetall(ACCURACY_KEY.format(prefix=prefix, model=model, version=version))
            pipe.hgetall(DRIFT_KEY.format(prefix=prefix, model=model, version=version))
        replies = pipe.execute()
        indexes: dict[tuple[str, int], dict[str, str]] = {}
        for i, v in enumerate(versions):
            acc, drift = replies[2 * i], replies[2 * i + 1]
            if acc:
                indexes[v] = {_text(k): _text(x) for k, x in acc.items()}
            if drift:
                features.drift[v] = {_text(k): _text(x) for k, x in drift.items()}
        features.accuracy = _read_accuracy(client, prefix, indexes)
    return features


def _read_accuracy(
    client: Any, prefix: str, indexes: dict[tuple[str, int], dict[str, str]]
) -> dict[tuple[str, int], AccuracyView]:
    wanted = [
        (v, start, int(index["bucket_ms"]))
        for v, index in indexes.items()
        for start in bucket_starts(index, ACCURACY_BUCKETS_READ)
    ]
    if not wanted:
        return {}
    pipe = client.pipeline(transaction=False)
    for v, start, bucket_ms in wanted:
        pipe.hgetall(bucket_hash_key(prefix, v, bucket_ms, start))
    buckets: dict[tuple[str, int], dict[int, dict[str, str]]] = defaultdict(dict)
    for (v, start, _), raw in zip(wanted, pipe.execute(), strict=True):
        buckets[v][start] = {_text(k): _text(x) for k, x in raw.items()}
    return {v: AccuracyView.read(index, buckets.get(v, {})) for v, index in indexes.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _utc(ms: str | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(ms) / 1000))


def format_asset(features: AssetFeatures) -> str:
    """A readable report: one table per model version, then live accuracy and drift."""
    if features.empty:
        return f"no features for asset {features.asset_id!r} (nothing scored recently?)\n"
    lines = [f"asset {features.asset_id}"]
    for (model, version), windows in sorted(features.windows.items()):
        lines.append(f"  {model} v{version}")
        header = f"    {'window':7} {'ends (UTC)':19} " + " ".join(
            f"{title:>{width}}" for _, title, width in WINDOW_COLUMNS
        )
        lines.append(header + "  class mix")
        for window, values in sorted(windows.items(), key=lambda w: _window_ms(w[0])):
            cells = " ".join(
                f"{_short(values.get(name, '-')):>{width}}" for name, _, width in WINDOW_COLUMNS
            )
            mix = ", ".join(
                f"{k.removeprefix('class.')} {float(v):.0%}"
                for k, v in sorted(values.items())
                if k.startswith("class.") and float(v) > 0
            )
            lines.append(f"    {window:7} {_utc(values.get('window_end_ms')):19} {cells}  {mix}")
        acc = features.accuracy.get((model, version))
        if acc is not None:
            lines += accuracy_lines(acc)
        drift = features.drift.get((model, version))
        if drift:
            state = "DRIFTED" if drift.get("drifted") == "1" else "stable"
            worst = max(
                (
                    (k.removeprefix("psi."), float(v))
                    for k, v in drift.items()
                    if k.startswith("psi.")
                ),
                key=lambda kv: kv[1],
                default=("-", 0.0),
            )
            lines.append(
                f"    drift {state}: psi {float(drift['score']):.3f} "
                f"(threshold {float(drift['threshold']):.2f}, worst {worst[0]}, "
                f"{drift.get('sample_count', '?')} samples)"
            )
    return "\n".join(lines) + "\n"


def accuracy_lines(view: AccuracyView) -> list[str]:
    """Live accuracy by event time: the newest bucket with enough labels, then the newest
    buckets with label coverage, delay and the confidence estimate beside."""
    snap = view.snapshot()
    lines = []
    if snap is not None:
        enough = "" if snap.enough else f", fewer than {view.min_labels}"
        coverage = f"{snap.coverage:.0%}" if snap.coverage is not None else "-"
        lines.append(
            f"    live accuracy {snap.accuracy:.1%} for events {_utc(str(snap.start_ms))}"
            f"-{_utc(str(snap.end_ms))[11:]} ({snap.correct}/{snap.total} labels{enough}, "
            f"coverage {coverage}, delay mean {snap.delay_mean_ms / 1000:.0f} s)"
        )
    est = "estimate (calibrated confidence)" if view.calibration else "estimate (confidence)"
    lines.append(
        f"    {'events from (UTC)':19} {'scored':>7} {'labels':>7} {'accuracy':>8} "
        f"{'coverage':>8} {'delay':>6} {'max':>6}  {est}"
    )
    for row in view.rows()[:ACCURACY_BUCKETS_SHOWN]:
        lines.append(
            f"    {_utc(str(row['start_ms'])):19} {row['scored']:>7} {row['labelled']:>7} "
            f"{_pct(row['accuracy']):>8} {_pct(row['coverage']):>8} "
            f"{_secs(row['delay_mean_ms']):>6} {_secs(row['delay_max_ms']):>6}  "
            f"{_pct(row['estimate'])}"
        )
    return lines


def _pct(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _secs(ms: float | int | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.0f}s"


def _short(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() and "." not in text else f"{value:.3f}"


def _window_ms(name: str) -> int:
    units = {"ms": 1, "s": 1000, "m": 60_000}
    for suffix in ("ms", "s", "m"):
        if name.endswith(suffix) and name[: -len(suffix)].isdigit():
            return int(name[: -len(suffix)]) * units[suffix]
    return 0
