"""Drift per model version: recent live inputs and confidences against the version's reference.

Each joined (input, prediction) pair adds the prediction's confidence and, for sensor inputs,
the per-channel mean/std/max summaries the trainer profiled (core.profile.sensor_summaries), so
live and reference features are computed by the same function. Every evaluation compares the
last `drift_window_s` of event time with ModelVersion.reference by PSI, feature by feature; the
score is the largest, and the version drifted when it exceeds the threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from driftline.schemas import headers as h
from driftline.schemas.contracts import SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.schemas.messages import DriftSignal, ModelVersion
from driftline.schemas.sensor_batch import decode_sensor_batch
from driftline.services.core.accuracy import AccuracySnapshot
from driftline.services.core.join import Prediction, StoredInput
from driftline.services.core.profile import CONFIDENCE_FEATURE, Histogram, sensor_summaries
from driftline.services.core.windows import RecentSamples
from driftline.services.features.accuracy import Version
from driftline.services.features.store import DRIFT_KEY, HashWrite, num

STATISTIC = "psi"
DRAIN_AT = 512


def reference_histograms(mv: ModelVersion) -> list[Histogram]:
    """The version's reference profile as core histograms (empty when it has none)."""
    if mv.reference is None:
        return []
    return [
        Histogram(f.name, np.asarray(f.edges, dtype=np.float64), np.asarray(f.fractions))
        for f in mv.reference.features
    ]


@dataclass(frozen=True)
class DriftEvaluation:
    signal: DriftSignal
    write: HashWrite


@dataclass
class DriftBook:
    """Recent samples per model version, and the evaluation against each reference."""

    window_ms: int
    max_samples: int
    min_samples: int
    threshold: float
    samples: dict[Version, RecentSamples] = field(default_factory=dict)
    pending: dict[Version, list[tuple[int, float, StoredInput]]] = field(default_factory=dict)
    fresh: set[Version] = field(default_factory=set)

    def add_pair(self, prediction: Prediction, stored: StoredInput) -> None:
        version = (prediction.model_name, prediction.model_version)
        rows = self.pending.setdefault(version, [])
        rows.append((stored.event_time_ms, prediction.confidence, stored))
        self.fresh.add(version)
        if len(rows) >= DRAIN_AT:
            self._drain(version)

    def _drain(self, version: Version) -> None:
        rows = self.pending.pop(version, [])
        if not rows:
            return
        n = len(rows)
        times = np.fromiter((t for t, _, _ in rows), dtype=np.int64, count=n)
        features: dict[str, np.ndarray] = {
            CONFIDENCE_FEATURE: np.fromiter((c for _, c, _ in rows), dtype=np.float64, count=n)
        }
        sensor_rows = [i for i, (_, _, s) in enumerate(rows) if s.input_type == "SensorWindow"]
        if sensor_rows:
            batch = decode_sensor_batch(
                [rows[i][2].data for i in sensor_rows],
                [h.CONTENT_TYPE_AVRO] * len(sensor_rows),
                channels=len(SENSOR_CHANNELS),
                n_samples=SENSOR_SAMPLES,
            )
            if len(batch):
                where = np.asarray([sensor_rows[p] for p in batch.positions])
                for name, values in sensor_summaries(batch.inputs, SENSOR_CHANNELS).items():
                    column = np.full(n, np.nan)  # rows without a sensor input: not compared
                    column[where] = values
                    features[name] = column
        buffer = self.samples.get(version)
        if buffer is None:
            buffer = self.samples[version] = RecentSamples(self.window_ms, self.max_samples)
        buffer.add(times, features)

    def evaluate(
        self,
        versions: Mapping[Version, ModelVersion],
        accuracy: Callable[[Version], AccuracySnapshot | None],
        *,
        key_prefix: str,
        ttl_ms: int,
    ) -> list[DriftEvaluation]:
        """Evaluate every version with new samples, enough of them and a reference profile."""
        out: list[DriftEvaluation] = []
        for version in sorted(self.fresh):
            self._drain(version)
            buffer = self.samples.get(version)
            mv = versions.get(version)
            reference = reference_histograms(mv) if mv is not None else []
            if buffer is None or len(buffer) < self.min_samples or not reference:
                continue
            self.fresh.discard(version)
            scores = buffer.psi_scores(reference)
            score = max(scores.values(), default=0.0)
            start, end = buffer.window()
            snap = accuracy(version)
            signal = DriftSignal(
                model_name=version[0],
                model_version=version[1],
                statistic=STATISTIC,
                score=score,
                threshold=self.threshold,
                drifted=score > self.threshold,
                window_start_ms=start,
                window_end_ms=end,
                sample_count=len(buffer),
                feature_scores=scores,
                live_accuracy=snap.accuracy if snap is not None and snap.total else None,
            )
            out.append(DriftEvaluation(signal, drift_write(key_prefix, signal, ttl_ms)))
        return out


def drift_write(prefix: str, signal: DriftSignal, ttl_ms: int) -> HashWrite:
    fields = {
        "model": signal.model_name,
        "version": str(signal.model_version),
        "statistic": signal.statistic,
        "score": num(signal.score),
        "threshold": num(signal.threshold),
        "drifted": "1" if signal.drifted else "0",
        "window_start_ms": str(signal.window_start_ms),
    }
    for name, value in sorted(signal.feature_scores.items()):
        fields[f"psi.{name}"] = num(value)
    if signal.live_accuracy is not None:
        fields["live_accuracy"] = num(signal.live_accuracy)
    return HashWrite(
        DRIFT_KEY.format(prefix=prefix, model=signal.model_name, version=signal.model_version),
        (("window_end_ms", signal.window_end_ms), ("sample_count", signal.sample_count)),
        fields,
        ttl_ms,
    )
