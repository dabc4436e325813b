"""The label join's throughput: one `driftline features --role join` worker over a backlog.

Preloads sensor windows, their results and labels for a share of them on a topic set of its
own, starts one join worker (the router on the shared batch loop, the join in faust), and
times it from its first join note to its last: every window and result is routed to the join
topic and joined, and every label yields its labelled window. The figure is events (a window
with its result) per second, with the records routed and joined per second beside it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.contracts import SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.schemas.messages import Label, SensorWindow
from driftline.services.bench.harness import bench_kafka, preload
from driftline.services.features.settings import FeaturesSettings
from driftline.services.runtime.metrics import EVENTS_CONSUMED


def _windows(n: int, assets: int, t0: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(5)
    samples = rng.normal(size=(len(SENSOR_CHANNELS), SENSOR_SAMPLES)).astype("<f4").tobytes()
    out = []
    for i in range(n):
        asset = f"insulator-{i % assets:05d}"
        window = SensorWindow(
            event_id=f"bench-5-{i}",  # the ids of features.results(seed=5)
            asset_id=asset,
            sensor_id="s",
            event_time_ms=t0 + (i // assets) * 250,
            sample_rate_hz=1.0,
            channels=list(SENSOR_CHANNELS),
            n_samples=SENSOR_SAMPLES,
            samples=samples,
        )
        out.append((asset, codec.encode(window)))
    return out


def _labels(n: int, assets: int, t0: int, every: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(0, n, every):
        asset = f"insulator-{i % assets:05d}"
        label = Label(
            event_id=f"bench-5-{i}",
            asset_id=asset,
            true_class="healthy",
            source="bench",
            label_time_ms=t0 + 60_000 + (i // assets) * 250,
        )
        out.append((asset, codec.encode(label)))
    return out


def join_throughput(
    settings: FeaturesSettings, events: int, assets: int, label_every: int = 5
) -> dict[str, Any]:
    """Preload windows, results and labels; time one join worker over all of them."""
    from driftline.services.bench.features import results
    from driftline.services.bench.featuresapp import PARTITIONS, _worker_throughput

    kafka = bench_kafka(settings.kafka.bootstrap_servers, partitions=PARTITIONS)
    t0 = int(time.time() * 1000) - 3_600_000
    t = kafka.topics
    preload(kafka, t.sensor_windows, _windows(events, assets, t0), h.AVRO)
    preload(kafka, t.inference_results, results(events, assets, t0, seed=5), h.AVRO)
    labels = _labels(events, assets, t0, label_every)
    preload(kafka, t.feedback_labels, labels, h.AVRO)
    notes = 2 * events + len(labels)
    join_topic = f"{kafka.topic_prefix}driftline-features-join"
    with tempfile.TemporaryDirectory(prefix="bench-join-") as tmp:
        r = _worker_throughput(
            settings,
            kafka,
            notes,
            role="join",
            workers=1,
            counted=f'{EVENTS_CONSUMED}{{topic="{join_topic}"}}',
            data_dir=Path(tmp),
            extra_env={"DRIFTLINE_LABEL_WAIT_S": "0"},
        )
    seconds = r["seconds"]
    return {
        "what": "the faust app, --role join (router and join), 1 worker",
        "events": events,
        "labels": len(labels),
        "records": notes,
        "seconds": seconds,
        "events_per_s": events / seconds if seconds > 0 else float("inf"),
        "records_per_s": r["events_per_s"],
        "cpu_us_per_record": 1e6 * r["cpu_s"] / notes,
    }
