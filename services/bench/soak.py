"""`driftline bench soak`: every service on a local cluster under a steady stream, sampled.

It starts a Kafka cluster (three KRaft nodes by default) and Redis of its own, on free ports
in a data dir of its own, creates the topics (replicated 3 times, min ISR 2, on three nodes),
trains the first models as the demo does, and starts every service in its own process
(exactly-once inference for both modalities, features stats and join, trainer, alerts).
The simulator then sends sensor windows and photos, a share of them labelled after a few
seconds, at constant rates. Every interval
it samples each service's resident memory (VmRSS), each consumer group's lag (committed
offsets against the last stable offsets, through the AdminClient) and the end-to-end latency
(event time to scored time) of the results scored in that interval. At the end a
read_committed reader's count of results by event id says what was lost or duplicated;
soak.json holds every series and the summary, soak.png plots them, and the verdict says
whether memory stayed flat and lag bounded. The stack is stopped and nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaException

from driftline.services.bench.soakprobe import LagProbe, ResultsWatch, rss_mib
from driftline.services.bench.soakreport import Bounds, Sample, intervals, summarize, table, write
from driftline.services.demo.config import DemoConfig
from driftline.services.demo.processes import Service, bootstrap, spawn, stop_all
from driftline.services.localstack import LocalStack, StackPorts, free_port
from driftline.services.runtime.kafka import admin, create_topics, replication_plan
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.simulator import sensors
from driftline.services.simulator.settings import SimulatorSettings

Say = Callable[[str], None]
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 10.0
    sensor_rate: float = 500.0
    image_rate: float = 20.0
    label_fraction: float = 0.2
    brokers: int = 3
    out_dir: Path | None = None
    data_dir: Path | None = None
    bootstrap_servers: str | None = None  # an existing Kafka instead of a stack of its own
    redis_url: str | None = None
    sample_s: float = 10.0
    assets: int = 200
    label_delay_s: tuple[float, float] = (1.0, 5.0)
    # The first models only need to serve; the trainer retrains on the stream's labels.
    bootstrap_windows: int = 4000
    bootstrap_images: int = 2000
    epochs: int = 4
    min_new_labels: int = 3000
    settle_s: float = 120.0  # after the stream: how long results may take to come in

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    @property
    def events_per_s(self) -> float:
        return self.sensor_rate + self.image_rate

    @property
    def modalities(self) -> list[str]:
        return ["sensor", "image"] if self.image_rate > 0 else ["sensor"]


def check(cfg: SoakConfig) -> str | None:
    """What is wrong with these settings, in one line (None: nothing)."""
    if cfg.minutes <= 0:
        return "--minutes must be more than 0"
    if cfg.sensor_rate <= 0:
        return "--sensor-rate must be more than 0 (the soak needs a sensor stream)"
    if cfg.image_rate < 0:
        return "--image-rate must be 0 (sensors only) or more"
    if not 0 <= cfg.label_fraction <= 1:
        return "--label-fraction must be between 0 and 1"
    if cfg.brokers < 1:
        return "--brokers must be 1 or more"
    if cfg.bootstrap_servers and not cfg.redis_url:
        return "--bootstrap-servers needs --redis-url too"
    if cfg.data_dir is not None and cfg.bootstrap_servers:
        return "--data-dir is for a stack of the soak's own; drop it with --bootstrap-servers"
    return None


def _free_ports(brokers: int) -> StackPorts:
    """Free loopback ports for `brokers` Kafka nodes (client and controller) and Redis."""
    while True:
        kafka = [free_port() for _ in range(brokers)]
        controllers = [free_port() for _ in range(brokers)]
        redis = free_port()
        if len({*kafka, *controllers, redis}) == 2 * brokers + 1:
            return StackPorts(
                kafka=kafka[0],
                controller=controllers[0],
                redis=redis,
                more_kafka=tuple(kafka[1:]),
                more_controllers=tuple(controllers[1:]),
            )


@contextlib.contextmanager
def _stack(cfg: SoakConfig, say: Say) -> Iterator[tuple[str, str]]:
    """(bootstrap servers, Redis URL): the given ones, or a stack of the soak's own, stopped
    (and its data dir removed, unless --data-dir named it) when the block ends."""
    if cfg.bootstrap_servers and cfg.redis_url:
        yield cfg.bootstrap_servers, cfg.redis_url
        return
    keep = cfg.data_dir is not None
    if cfg.data_dir is not None:
        data_dir = cfg.data_dir
    else:
        Path(".driftline").mkdir(exist_ok=True)
        data_dir = Path(tempfile.mkdtemp(prefix="soak-stack-", dir=".driftline"))
    stack = LocalStack(data_dir, _free_ports(cfg.brokers), log=lambda m: say(f"stack: {m}"))
    try:
        status = stack.up(timeout_s=240.0)
        yield status.bootstrap_servers, status.redis_url
    finally:
        status = stack.status()
        pids = [p for p in (*status.kafka_pids, status.redis_pid) if p is not None]
        stack.down()
        left = [p for p in pids if Path(f"/proc/{p}").exists()]
        if left:
            say(f"warning: stack processes still running after stop: {left}")
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def run(cfg: SoakConfig, say: Say) -> int:
    """The whole soak; returns 0 when the verdict passes, 1 when not."""
    out_dir = (
        cfg.out_dir or Path(".driftline") / "reports" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with _stack(cfg, say) as (bootstrap_servers, redis_url):
        prefix = f"soak{uuid.uuid4().hex[:6]}."
        kafka = KafkaSettings(bootstrap_servers=bootstrap_servers, topic_prefix=prefix)
        create_topics(kafka)
        brokers = len(admin(kafka).list_topics(timeout=10).brokers)
        replicas, min_isr = replication_plan(kafka, brokers)
        say(
            f"kafka {bootstrap_servers} ({brokers} broker{'s' if brokers != 1 else ''}, "
            f"topics x{replicas}, min ISR {min_isr})"
        )
        env = _env(cfg, kafka, redis_url, out_dir)
        demo_cfg = DemoConfig(
            images=cfg.image_rate > 0,
            bootstrap_windows=cfg.bootstrap_windows,
            bootstrap_images=cfg.bootstrap_images,
        )
        bootstrap(demo_cfg, env, logs, say)
        services: list[Service] = []
        try:
            _start_services(cfg, env, out_dir, logs, say, services)
            code = _soak(cfg, kafka, services, out_dir, brokers, say)
        finally:
            stop_all(services)
            alive = [s.name for s in services if s.proc.poll() is None]
            if alive:
                say(f"warning: still running after stop: {', '.join(alive)}")
    return code


def _env(cfg: SoakConfig, kafka: KafkaSettings, redis_url: str, out_dir: Path) -> dict[str, str]:
    artifacts = (out_dir / "artifacts").resolve()
    return {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_REDIS_URL": redis_url,
        "DRIFTLINE_REDIS_KEY_PREFIX": f"driftline:{kafka.topic_prefix}",
        "DRIFTLINE_ARTIFACT_ROOT": artifacts.as_uri(),
        "DRIFTLINE_LOG_LEVEL": "INFO",
        "DRIFTLINE_EPOCHS": str(cfg.epochs),
    }


def _start_services(
    cfg: SoakConfig,
    env: dict[str, str],
    out_dir: Path,
    logs: Path,
    say: Say,
    services: list[Service],
) -> None:
    """Start every service into `services` (so the caller stops what started, even when one
    never becomes ready) and wait until inference and the features workers are ready."""
    services += [
        spawn(
            f"infer-{m}",
            ["infer", "--modality", m],
            {**env, "DRIFTLINE_EXACTLY_ONCE": "true", "DRIFTLINE_INSTANCE_ID": f"soak-{m}"},
            logs,
            free_port(),
        )
        for m in cfg.modalities
    ]
    # Stats and join as two workers: each role is an app (consumer group) of its own, so each
    # reads every partition of inference.results; each has its own RocksDB dir.
    for role in ("stats", "join"):
        worker_env = {
            **env,
            "DRIFTLINE_APP_ID": f"driftline-features-{role}",
            "DRIFTLINE_DATA_DIR": str((out_dir / f"features-{role}").resolve()),
        }
        services.append(
            spawn(f"features-{role}", ["features", "--role", role], worker_env, logs, free_port())
        )
    trainer_env = {
        **env,
        "DRIFTLINE_MIN_NEW_LABELS": str(cfg.min_new_labels),
        "DRIFTLINE_MAX_SENSOR_EXAMPLES": "3000",
        "DRIFTLINE_MAX_IMAGE_EXAMPLES": "3000",
    }
    services.append(spawn("trainer", ["train"], trainer_env, logs, free_port()))
    services.append(spawn("alerts", ["alerts"], env, logs, free_port()))
    say(f"services starting ({', '.join(s.name for s in services)}); logs in {logs}")
    deadline = time.monotonic() + READY_TIMEOUT_S
    for s in services:
        if not s.name.startswith(("infer-", "features-")):
            continue
        while not s.ready():
            if s.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{s.name} did not become ready; see {s.log}")
            time.sleep(0.5)


def _soak(
    cfg: SoakConfig,
    kafka: KafkaSettings,
    services: list[Service],
    out_dir: Path,
    brokers: int,
    say: Say,
) -> int:
    watch = ResultsWatch(kafka, started_ms=int(time.time() * 1000)).start()
    probe = LagProbe(kafka)
    sim_stop = threading.Event()
    sim_errors: list[BaseException] = []
    sim_settings = SimulatorSettings(
        kafka=kafka,
        rate=cfg.sensor_rate,
        image_rate=cfg.image_rate,
        assets=cfg.assets,
        label_fraction=cfg.label_fraction,
        label_delay_min_s=cfg.label_delay_s[0],
        label_delay_max_s=cfg.label_delay_s[1],
    )

    def simulate() -> None:
        try:
            sensors.run(
                sim_settings,
                stop=sim_stop.is_set,
                progress=False,
                on_sent=lambda s: watch.record_sent(s.event_id, s.modality, s.true_class, s.t_s),
            )
        except BaseException as exc:  # surfaced by the loop below
            sim_errors.append(exc)

    say(
        f"streaming {cfg.sensor_rate:g} windows/s and {cfg.image_rate:g} photos/s "
        f"({cfg.label_fraction:.0%} labelled) for {cfg.seconds:.0f} s; a sample every "
        f"{cfg.sample_s:g} s"
    )
    started = time.monotonic()
    watch.started_ms = int(time.time() * 1000)
    sim = threading.Thread(target=simulate, name="soak-simulator", daemon=True)
    sim.start()
    samples: list[Sample] = []
    problems: list[str] = []
    # A sample every sample_s, and one at the end when the duration is not a multiple of it.
    marks = [k * cfg.sample_s for k in range(1, int(cfg.seconds // cfg.sample_s) + 1)]
    if not marks or marks[-1] < cfg.seconds - 0.5:
        marks.append(cfg.seconds)
    try:
        for at in marks:
            while time.monotonic() - started < at and not problems:
                time.sleep(0.25)
                problems += _problems(services, sim_errors, watch)
            if problems:
                break
            samples.append(_sample(time.monotonic() - started, services, probe, watch, say))
            say(_progress(samples[-1], cfg, watch))
    except KeyboardInterrupt:
        problems.append(f"interrupted after {time.monotonic() - started:.0f} s")
    stream_s = time.monotonic() - started
    sim_stop.set()
    sim.join(timeout=30)
    say(f"stream stopped after {stream_s:.0f} s; waiting up to {cfg.settle_s:.0f} s for results")
    settle = time.monotonic() + cfg.settle_s
    try:
        while watch.counts()[2] and time.monotonic() < settle and not watch.errors:
            time.sleep(0.5)
    except KeyboardInterrupt:
        problems.append("interrupted while results were still coming in")
    drained = {group: sum(topics.values()) for group, topics in _lag(probe, say).items()}
    watch.join()
    sent, scored, lost, duplicated = watch.counts()
    scored_at, latency = watch.latencies()
    end_s = max(stream_s, float(scored_at.max()) if scored_at.size else 0.0)
    lat = intervals(scored_at, latency, cfg.sample_s, end_s + 1e-3)
    summary = summarize(
        samples,
        drained,
        lat,
        Bounds(warmup_s=min(120.0, 0.2 * cfg.seconds)),
        cfg.events_per_s,
        lost,
        duplicated,
        problems + [str(e) for e in watch.errors[:1]],
    )
    # The counts of the end, after the stream stopped and results settled (not the last sample).
    summary.sent, summary.scored = sent, scored
    config = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "brokers_seen": brokers,
        "topic_prefix": kafka.topic_prefix,
        "stream_seconds": stream_s,
        "events_sent": sent,
        "events_scored": scored,
    }
    json_path, png = write(out_dir, config, samples, lat, summary)
    print(table(summary), flush=True)
    say(f"report: {json_path} and {png}; service logs in {out_dir / 'logs'}")
    return 0 if summary.passed else 1


def _problems(
    services: list[Service], sim_errors: list[BaseException], watch: ResultsWatch
) -> list[str]:
    out = [
        f"{s.name} stopped (exit {s.proc.returncode}); see {s.log}"
        for s in services
        if s.proc.poll() is not None
    ]
    out += [f"the simulator failed: {e}" for e in sim_errors[:1]]
    out += [f"the results reader failed: {e}" for e in watch.errors[:1]]
    return out


def _lag(probe: LagProbe, say: Say) -> dict[str, dict[str, int]]:
    try:
        return probe.sample()
    except KafkaException as exc:
        say(f"warning: consumer lag not read this time: {exc}")
        return {}


def _sample(
    t_s: float, services: list[Service], probe: LagProbe, watch: ResultsWatch, say: Say
) -> Sample:
    rss = {s.name: rss_mib(s.proc.pid) for s in services}
    sent, scored, _, _ = watch.counts()
    lag = _lag(probe, say)
    return Sample(
        t_s=round(t_s, 2),
        rss_mib={name: round(v, 1) for name, v in rss.items() if v is not None},
        lag={group: sum(topics.values()) for group, topics in lag.items()},
        sent=sent,
        scored=scored,
        lag_by_topic=lag,
    )


def _progress(s: Sample, cfg: SoakConfig, watch: ResultsWatch) -> str:
    scored_at, latency = watch.latencies()
    recent = latency[(scored_at >= s.t_s - cfg.sample_s) & (scored_at < s.t_s)]
    p99 = f"{float(np.percentile(recent, 99)):,.0f} ms" if recent.size else "-"
    worst = max(s.lag.items(), key=lambda kv: kv[1], default=("-", 0))
    rss = max(s.rss_mib.items(), key=lambda kv: kv[1], default=("-", 0.0))
    return (
        f"soak {s.t_s:5.0f}/{cfg.seconds:.0f} s  sent {s.sent:,}  scored {s.scored:,}  "
        f"p99 {p99} (last {cfg.sample_s:g} s)  lag max {worst[1]:,} ({worst[0]})  "
        f"rss {sum(s.rss_mib.values()):,.0f} MiB (largest {rss[0]} {rss[1]:,.0f})"
    )


def say_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
