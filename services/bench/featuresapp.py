"""`driftline bench features`, the workers: the stats role and the join over preloaded results.

Each worker runs as `driftline features --role ...` in a process of its own (as deployed) and
is timed from the first result it counted to the last, by its /metrics, so start-up and
recovery are left out. Both roles read the same preloaded results from the start, each in its
own consumer group, one after the other (never beside each other on the same cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from driftline.schemas import headers as h
from driftline.services.features.settings import FeaturesSettings
from driftline.services.runtime.settings import KafkaSettings

PARTITIONS = 6
POLL_S = 0.2  # how often the workers' /metrics are read (each read costs the worker a little)


def _worker_throughput(
    settings: FeaturesSettings,
    kafka: KafkaSettings,
    events: int,
    *,
    role: str,
    workers: int,
    counted: str,
    data_dir: Path,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start `workers` processes of `role`, time them until the metric line `counted` sums to
    `events` (the first count to the last, so start-up and recovery are left out); also the
    workers' CPU seconds over that time."""
    from driftline.services.localstack import free_port

    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_REDIS_URL": settings.redis_url.get_secret_value(),
        "DRIFTLINE_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "DRIFTLINE_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    ports = [free_port() for _ in range(workers)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driftline.services.cli",
                "features",
                "--role",
                role,
                "--metrics-port",
                str(port),
            ],
            env={**env, "DRIFTLINE_DATA_DIR": str(data_dir / f"{role}-{n}")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n, port in enumerate(ports)
    ]
    first = last = None
    cpu0 = cpu = 0.0
    try:
        deadline = time.monotonic() + 90 + events / 500
        while time.monotonic() < deadline:
            done = sum(_metric(port, counted) for port in ports)
            now = time.perf_counter()
            if done > 0 and first is None:
                first, cpu0 = (now, done), _cpu_s(procs)
            if done >= events:
                last, cpu = (now, done), _cpu_s(procs) - cpu0
                break
            time.sleep(POLL_S)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    if first is None or last is None:
        raise RuntimeError(f"the {role} worker did not take every preloaded result in time")
    seconds = last[0] - first[0]
    return {
        "events": events,
        "seconds": seconds,
        "events_per_s": (last[1] - first[1]) / seconds if seconds > 0 else float("inf"),
        "cpu_s": cpu,
        "partitions": PARTITIONS,
        "workers": workers,
    }


def _cpu_s(procs: list[subprocess.Popen[bytes]]) -> float:
    """User and system CPU seconds of these processes so far (Linux)."""
    total = 0
    for proc in procs:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def app_throughput(
    settings: FeaturesSettings, events: int, assets: int, workers: int, join_events: int
) -> dict[str, dict[str, Any]]:
    """Preload results on a topic set of their own; time the stats role over them, then the
    join over the first `join_events` of them (both read from the start, each in its own
    consumer group)."""
    import tempfile

    from driftline.services.bench.features import results
    from driftline.services.bench.harness import bench_kafka, preload

    kafka = bench_kafka(settings.kafka.bootstrap_servers, partitions=PARTITIONS)
    t0 = int(time.time() * 1000) - 3_600_000
    preload(kafka, kafka.topics.inference_results, results(events, assets, t0, seed=4), h.AVRO)
    join_topic = settings.model_copy(update={"kafka": kafka}).faust_app_id + "-join"
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        stats = _worker_throughput(
            settings,
            kafka,
            events,
            role="stats",
            workers=workers,
            counted='driftline_feature_events_total{outcome="accepted"}',
            data_dir=Path(tmp),
        )
        if not join_events:
            return {"app_stats": _named(stats, workers)}
        join = _worker_throughput(
            settings,
            kafka,
            min(join_events, events),
            role="join",
            workers=1,
            counted=f'driftline_events_consumed_total{{topic="{join_topic}"}}',
            data_dir=Path(tmp),
        )
    join["what"] = "the label join, --role join, 1 worker (faust)"
    return {"app_stats": _named(stats, workers), "app_join": join}


def _named(stats: dict[str, Any], workers: int) -> dict[str, Any]:
    plural = "s" if workers > 1 else ""
    stats["what"] = f"statistics, --role stats, {workers} worker{plural} (batch loop)"
    return stats


def _metric(port: int, line_start: str) -> float:
    """The value of the first metric line that starts with `line_start` (0 if none yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def inference_rate(given: float | None) -> tuple[float | None, str]:
    """The inference consumer's at-least-once rate to compare with, and where it came from:
    the flag, else the newest `bench inference --modality sensor` report of this checkout."""
    if given:
        return given, "--inference-rate"
    reports = sorted(Path(".driftline", "bench").glob("inference-sensor-*.json"))
    for path in reversed(reports):
        try:
            rate = json.loads(path.read_text())["pipeline"]["at_least_once_per_s"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return float(rate), str(path)
    return None, "no `driftline bench inference` report here; pass --inference-rate"
