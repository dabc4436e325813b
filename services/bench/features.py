"""`driftline bench features`: read latency of one asset's features, statistics throughput.

1. Reads: `--assets` assets get windows (and their version accuracy and drift hashes) written
   through the app's own store; then `--reads` random reads of one asset are timed: the asset
   hash alone (HGETALL, what a model server would fetch) and the whole `features get` (that,
   plus the version's accuracy and drift in one pipelined round trip).
2. The statistics path in process: `--events` Avro InferenceResults decoded, folded into
   windows and flushed to Redis every second, with no Kafka in the way.
3. The workers (services.bench.featuresapp): `--app-events` results preloaded on
   inference.results of a topic set of its own, then `driftline features --role stats` timed
   until it folded them all, then `--role join` until it joined them all; both beside the
   inference consumer's at-least-once rate (`--inference-rate`, else the newest
   `driftline bench inference --modality sensor` report here).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from driftline.schemas import headers as h
from driftline.schemas.avro import encode_record
from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES
from driftline.services.bench.featuresapp import app_throughput, inference_rate
from driftline.services.features.drift import drift_write
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.pipeline import FeaturesPipeline, PipelineTables
from driftline.services.features.rebuild import DiscardOutbox, delete_prefix
from driftline.services.features.records import RawRecord
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.store import RedisFeatureStore
from driftline.services.features.tables import DictTable

MODEL = MODEL_NAMES["sensor"]
FEAST_P99_MS = 1.5
TARGET_P99_MS = 2.0


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        f = self.figures
        lines = ["", "driftline bench features", ""]
        for name in ("read_asset_hash", "read_features_get"):
            if name in f:
                r = f[name]
                lines.append(
                    f"  {r['what']:44} p50 {r['p50_ms']:6.3f} ms  p99 {r['p99_ms']:6.3f} ms  "
                    f"p99.9 {r['p999_ms']:6.3f} ms  ({r['reads']:,} reads)"
                )
        lines.append(
            f"  {'target p99':44} {TARGET_P99_MS} ms (Feast publishes < {FEAST_P99_MS} ms)"
        )
        infer = f.get("inference", {}).get("events_per_s")
        for name in ("stats_path", "app_stats", "app_join"):
            if name in f:
                r = f[name]
                rate, n = r["events_per_s"], r["events"]
                line = f"  {r['what']:52} {rate:10,.0f} events/s  ({n:,} events)"
                if infer and name != "stats_path":
                    r["over_inference"] = rate / infer
                    line += f"  {rate / infer:5.2f}x inference"
                lines.append(line)
        if "inference" in f:
            i = f["inference"]
            rate = f"{i['events_per_s']:,.0f} events/s" if i["events_per_s"] else "unknown"
            lines.append(f"  {'inference at-least-once (sensor), for the ratio':52} {rate}")
            lines.append(f"    from {i['source']}; goal: statistics >= 1.00x inference")
        return "\n".join(lines) + "\n"


def results(n: int, assets: int, t0: int, seed: int) -> list[tuple[str, bytes]]:
    """(asset id, Avro InferenceResult) pairs: 4 per second per asset, event time ascending."""
    rng = np.random.default_rng(seed)
    conf = rng.beta(5, 2, n)
    cls = rng.integers(0, len(INSULATOR_CLASSES), n)
    probs = np.full(len(INSULATOR_CLASSES), 0.25, "<f4").tobytes()
    out = []
    for i in range(n):
        asset = f"insulator-{i % assets:05d}"
        t = t0 + (i // assets) * 250
        record = {
            "schema_version": 1,
            "event_id": f"bench-{seed}-{i}",
            "asset_id": asset,
            "modality": "sensor",
            "model_name": MODEL,
            "model_version": 1,
            "classes": list(INSULATOR_CLASSES),
            "probabilities": probs,
            "predicted_class": INSULATOR_CLASSES[int(cls[i])],
            "confidence": float(conf[i]),
            "event_time_ms": t,
            "scored_time_ms": t + 10,
        }
        out.append((asset, encode_record("InferenceResult", record)))
    return out


def _records(items: list[tuple[str, bytes]], partitions: int = 6) -> list[RawRecord]:
    counters = [0] * partitions
    out = []
    for asset, value in items:
        p = int(asset[-5:]) % partitions
        out.append(
            RawRecord("bench.inference.results", p, counters[p], asset.encode(), value, h.AVRO)
        )
        counters[p] += 1
    return out


def _pipeline(settings: FeaturesSettings, store: RedisFeatureStore) -> FeaturesPipeline:
    return FeaturesPipeline(
        settings,
        FeaturesMetrics(CollectorRegistry()),
        store,
        DiscardOutbox(),
        PipelineTables(stats=DictTable(), accuracy=DictTable()),
    )


async def _stats_path(settings: FeaturesSettings, events: int, assets: int) -> dict[str, Any]:
    t0 = int(time.time() * 1000) - 3_600_000
    records = _records(results(events, assets, t0 - t0 % 60_000, seed=1))
    store = RedisFeatureStore.from_url(settings.redis_url.get_secret_value())
    pipeline = _pipeline(settings, store)
    flushes = 0
    start = time.perf_counter()
    last_flush = start
    for lo in range(0, len(records), settings.batch_max):
        await pipeline.on_results(records[lo : lo + settings.batch_max], forward=False)
        if time.perf_counter() - last_flush >= settings.flush_interval_s:
            await pipeline.flush(now=0.0)
            assert pipeline.stats is not None
            pipeline.stats.evict()
            last_flush = time.perf_counter()
            flushes += 1
    await pipeline.flush(now=0.0)
    seconds = time.perf_counter() - start
    await store.close()
    return {
        "what": "statistics path, in process (decode+fold+Redis)",
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "flushes": flushes + 1,
    }


async def _populate(settings: FeaturesSettings, assets: int) -> None:
    """Twelve minutes of results per asset, a live accuracy and a drift hash for the version."""
    t0 = int(time.time() * 1000) - 900_000
    store = RedisFeatureStore.from_url(settings.redis_url.get_secret_value())
    pipeline = _pipeline(settings, store)
    await pipeline.on_results(_records(results(assets * 12 * 4, assets, t0, seed=2)), forward=False)
    assert pipeline.accuracy is not None
    for i in range(200):
        t = t0 + i * 1000
        pipeline.accuracy.scored((MODEL, 1), t, 0.9, i % 6)
        pipeline.accuracy.labelled((MODEL, 1), t, t + 5000, i % 5 != 0, i % 6)
    await pipeline.flush(now=0.0)
    from driftline.schemas.messages import DriftSignal

    signal = DriftSignal(
        model_name=MODEL,
        model_version=1,
        statistic="psi",
        score=0.05,
        threshold=0.25,
        drifted=False,
        window_start_ms=t0,
        window_end_ms=t0 + 600_000,
        sample_count=5000,
        feature_scores={"confidence": 0.05},
    )
    await store.write([drift_write(settings.redis_key_prefix, signal, 3_600_000)])
    await store.close()


def _percentiles(samples_ns: list[int], what: str) -> dict[str, Any]:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {
        "what": what,
        "reads": len(samples_ns),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "p999_ms": float(np.percentile(ms, 99.9)),
        "max_ms": float(ms.max()),
        "mean_ms": statistics.fmean(ms.tolist()),
    }


def _reads(settings: FeaturesSettings, assets: int, reads: int) -> dict[str, dict[str, Any]]:
    import redis

    from driftline.services.features.reader import read_asset
    from driftline.services.features.store import ASSET_KEY

    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    rng = np.random.default_rng(3)
    picks = [f"insulator-{int(i):05d}" for i in rng.integers(0, assets, reads)]
    prefix = settings.redis_key_prefix
    for asset in picks[:500]:  # warm the connection and the server
        client.hgetall(ASSET_KEY.format(prefix=prefix, asset=asset))
    hash_ns, get_ns = [], []
    for asset in picks:
        t = time.perf_counter_ns()
        fields = client.hgetall(ASSET_KEY.format(prefix=prefix, asset=asset))
        hash_ns.append(time.perf_counter_ns() - t)
        if not fields:
            raise RuntimeError(f"no features for {asset}: population failed")
    for asset in picks:
        t = time.perf_counter_ns()
        read_asset(client, prefix, asset)
        get_ns.append(time.perf_counter_ns() - t)
    client.close()
    return {
        "read_asset_hash": _percentiles(hash_ns, "one asset's features (HGETALL)"),
        "read_features_get": _percentiles(get_ns, "features get (asset + accuracy + drift)"),
    }


def main(
    settings: FeaturesSettings,
    *,
    reads: int,
    assets: int,
    events: int,
    app_events: int,
    json_path: Path | None,
    app_workers: int = 1,
    join_events: int = 20_000,
    inference_per_s: float | None = None,
) -> int:
    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    settings = settings.model_copy(update={"redis_key_prefix": prefix})
    report = Report()
    try:
        asyncio.run(_populate(settings, assets))
        report.figures.update(_reads(settings, assets, reads))
        report.figures["stats_path"] = asyncio.run(_stats_path(settings, events, assets))
        if app_events:
            figures = app_throughput(settings, app_events, assets, app_workers, join_events)
            report.figures.update(figures)
            rate, source = inference_rate(inference_per_s)
            report.figures["inference"] = {"events_per_s": rate, "source": source}
    finally:
        delete_prefix(settings)
    report.figures["machine"] = {"cpus": os.cpu_count()}
    sys.stdout.write(report.table())
    path = (
        json_path
        or Path(".driftline") / "bench" / f"features-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.figures, indent=2))
    print(f"  figures written to {path}")
    ok = report.figures["read_asset_hash"]["p99_ms"] <= TARGET_P99_MS
    return 0 if ok else 1
