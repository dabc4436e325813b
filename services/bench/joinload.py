"""The label join's throughput: one `driftline features --role join` worker over a backlog.

Preloads sensor windows, their results and labels for a share of them on a topic set of its
own, starts one join worker (the router on the shared batch loop, the join in faust), and
times it from its first join note to its last: every window and result is routed to the join
topic and joined, and every label yields its labelled window. The figure is events (a window
with its result) per second, with the records routed and joined per second beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
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


def _consumed(port: int, topic: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    want = f'{EVENTS_CONSUMED}{{topic="{topic}"}}'
    for line in text.splitlines():
        if line.startswith(want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def join_throughput(
    settings: FeaturesSettings, events: int, assets: int, label_every: int = 5
) -> dict[str, Any]:
    """Preload windows, results and labels; time one join worker over all of them."""
    from driftline.services.bench.features import results
    from driftline.services.localstack import free_port

    kafka = bench_kafka(settings.kafka.bootstrap_servers, partitions=6)
    t0 = int(time.time() * 1000) - 3_600_000
    t = kafka.topics
    preload(kafka, t.sensor_windows, _windows(events, assets, t0), h.AVRO)
    preload(kafka, t.inference_results, results(events, assets, t0, seed=5), h.AVRO)
    labels = _labels(events, assets, t0, label_every)
    preload(kafka, t.feedback_labels, labels, h.AVRO)
    notes = 2 * events + len(labels)
    join_topic = f"{kafka.topic_prefix}driftline-features-join"
    port = free_port()
    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_REDIS_URL": settings.redis_url.get_secret_value(),
        "DRIFTLINE_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "DRIFTLINE_LOG_LEVEL": "WARNING",
        "DRIFTLINE_FEATURES_LABEL_WAIT_S": "0",
    }
    cmd = [sys.executable, "-m", "driftline.services.cli", "features", "--role", "join"]
    proc = subprocess.Popen(
        [*cmd, "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = last = None
    cpu0 = 0.0
    try:
        deadline = time.monotonic() + 120 + notes / 200
        while time.monotonic() < deadline:
            joined = _consumed(port, join_topic)
            now = time.perf_counter()
            if joined > 0 and first is None:
                first, cpu0 = (now, joined), _cpu_s(proc.pid)
            if joined >= notes:
                last = (now, joined)
                break
            time.sleep(0.1)
        cpu = _cpu_s(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if first is None or last is None:
        raise RuntimeError(f"the join worker did not join all {notes:,} records in time")
    seconds = last[0] - first[0]
    return {
        "what": "the faust app, --role join (router and join), 1 worker",
        "events": events,
        "labels": len(labels),
        "records": notes,
        "seconds": seconds,
        "events_per_s": events / seconds if seconds > 0 else float("inf"),
        "records_per_s": notes / seconds if seconds > 0 else float("inf"),
        "cpu_us_per_record": 1e6 * cpu / notes,
    }


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far (Linux)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
