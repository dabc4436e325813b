"""The drift-recovery demo: the whole loop on the local stack, watched live, then reported.

Every service runs as its own process, as it would in production: inference for each
modality (exactly-once), the features app, the trainer and the alerting consumer. The
simulator runs here, so the demo knows the truth of every event it sends; a reader of
inference.results counts results by event id (nothing lost, nothing duplicated) and
scores them against that truth per model version. A fresh topic prefix per run keeps runs
apart on a shared broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families

from schemas import codec
from schemas.messages import InferenceResult, ModelVersion
from services.core.ledger import Ledger
from services.drift_report import Mark, RunSummary, recovery, write
from services.runtime.kafka import create_topics
from services.runtime.localstack import free_port
from services.runtime.registry import RegistrySnapshot
from services.runtime.settings import KafkaSettings, SimulatorSettings
from services.simulator import scenario as scenarios
from services.simulator import sensors

Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    scenario: str = "aging"
    drift_at_s: float = 120.0
    duration_s: float = 360.0
    rate: float = 100.0
    image_rate: float = 10.0
    images: bool = True
    assets: int = 50
    label_fraction: float = 0.5
    label_delay_s: tuple[float, float] = (1.0, 5.0)
    bucket_s: float = 10.0
    tail_s: float = 60.0
    min_new_labels: int = 600
    max_examples: int = 3000
    epochs: int = 8
    bootstrap_windows: int = 8000
    bootstrap_images: int = 2000
    seed: int = 7
    out_dir: Path | None = None

    @property
    def modalities(self) -> list[str]:
        return ["sensor", "image"] if self.images else ["sensor"]


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1
            ) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    """Sum of the samples of `name` whose labels include `labels`."""
    found = [
        v
        for (n, lbls), v in samples.items()
        if n == name and all((k, val) in lbls for k, val in labels.items())
    ]
    return sum(found) if found else None


@dataclass
class Watch:
    """What the demo sees of the run: results by event id, registry changes, first scores."""

    started: float
    ledger: Ledger = field(default_factory=Ledger)
    marks: list[Mark] = field(default_factory=list)
    first_seen: dict[tuple[str, int], float] = field(default_factory=dict)
    versions: dict[str, list[ModelVersion]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    def t(self) -> float:
        return time.monotonic() - self.started

    def read_results(self, kafka: KafkaSettings) -> None:
        consumer = _reader(kafka, [kafka.topics.inference_results])
        try:
            while not self.stop.is_set():
                for m in consumer.consume(1000, timeout=0.2):
                    if m.error() is not None or not m.value():
                        continue
                    r = codec.decode(InferenceResult, m.value())
                    with self.lock:
                        self.ledger.record_result(r.event_id, r.model_version, r.predicted_class)
                        key = (r.modality, r.model_version)
                        if key not in self.first_seen:
                            self.first_seen[key] = self.t()
                            if r.model_version > 1:
                                self.marks.append(
                                    Mark(self.t(), r.modality, f"v{r.model_version} serves")
                                )
        except BaseException as exc:  # surfaced by the demo loop
            self.errors.append(exc)
        finally:
            consumer.close()

    def follow_registry(self, kafka: KafkaSettings) -> None:
        consumer = _reader(kafka, [kafka.topics.models_registry])
        snapshot = RegistrySnapshot()
        try:
            while not self.stop.is_set():
                for m in consumer.consume(100, timeout=0.5):
                    if m.error() is not None:
                        continue
                    raw_key = m.key()
                    key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                    if key is None or "/v" not in key or not m.value():
                        continue
                    mv = codec.decode(ModelVersion, m.value())
                    snapshot.apply(key, m.value())
                    with self.lock:
                        known = self.versions.setdefault(mv.modality, [])
                        if any(v.version == mv.version for v in known):
                            continue
                        known.append(mv)
                        if mv.version > 1:
                            kind = "rejected" if mv.status == "rejected" else "info"
                            text = f"v{mv.version} published as {mv.status}{_gate_text(mv)}"
                            self.marks.append(Mark(self.t(), mv.modality, text, kind))
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            consumer.close()


def _gate_text(mv: ModelVersion) -> str:
    ch = mv.metrics.get("holdout_macro_f1")
    cp = mv.metrics.get("champion_holdout_macro_f1")
    if ch is None or cp is None:
        return ""
    return f" (macro-F1 {ch:.2f} vs champion {cp:.2f})"


def _reader(kafka: KafkaSettings, topics: list[str]) -> Consumer:
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"demo-reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
    )
    consumer.subscribe(topics)
    return consumer


def _spawn(name: str, args: list[str], env: dict[str, str], logs: Path, port: int) -> Service:
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args, "--metrics-port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, proc, port, log)


def _stop(services: list[Service], timeout_s: float = 30.0) -> None:
    for s in services:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for s in services:
        try:
            s.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait(5)


def _bootstrap(cfg: DemoConfig, env: dict[str, str], logs: Path, say: Say) -> None:
    say(f"bootstrap: training the first {' and '.join(cfg.modalities)} models on simulated data")
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "train",
        "--bootstrap",
        "--windows",
        str(cfg.bootstrap_windows),
        "--images",
        str(cfg.bootstrap_images),
    ]
    if not cfg.images:
        cmd += ["--modality", "sensor"]
    with (logs / "bootstrap.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for raw in proc.stdout:
            log.write(raw)
            line = raw.decode(errors="replace").rstrip()
            if line:
                say(f"  {line}")
        if proc.wait() != 0:
            raise RuntimeError(f"bootstrap training failed; see {logs / 'bootstrap.log'}")


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


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _rates_text(cfg: DemoConfig) -> str:
    photos = cfg.image_rate if cfg.images else 0.0
    low, high = cfg.label_delay_s
    return (
        f"{cfg.rate:.0f} windows/s, {photos:.0f} photos/s, "
        f"{cfg.label_fraction:.0%} labelled after {low:.0f}-{high:.0f} s"
    )


def _status_lines(
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
            live = _value(feats, "driftline_live_accuracy", model=f"insulator-{modality}")
            drift = _value(feats, "driftline_drift_score", model=f"insulator-{modality}")
            lines.append(
                f"  {modality:6}  serving v{serving}   accuracy (last 30 s, vs truth) "
                + (f"{acc:.3f} of {n}" if n else "-")
                + (f"   live accuracy (labels) {live:.3f}" if live is not None else "")
                + (f"   drift score {drift:.2f}" if drift is not None else "")
            )
        trainer = scrapes.get("trainer", {})
        trainings = _value(trainer, "driftline_trainings_total")
        alerts = _value(scrapes.get("alerts", {}), "driftline_alerts_raised_total")
        recent = list(watch.marks)[-3:]
    lines.append(
        f"  trainer trainings {trainings or 0:.0f}   alerts raised {alerts or 0:.0f}   "
        + (
            "; ".join(f"{m.t_s:.0f}s {m.modality} {m.text}" for m in recent)
            or "no new versions yet"
        )
    )
    return lines


def run(
    cfg: DemoConfig, bootstrap_servers: str, redis_url: str, say: Say, live: bool
) -> RunSummary:
    """Run the scenario end to end and write the report; returns the summary."""
    prefix = f"demo{time.strftime('%H%M%S')}{uuid.uuid4().hex[:4]}."
    out_dir = cfg.out_dir or Path(".driftline") / "reports" / prefix.rstrip(".")
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers, topic_prefix=prefix)
    create_topics(kafka)
    artifacts = (Path(".driftline") / "artifacts" / prefix.rstrip(".")).resolve()
    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": prefix,
        "DRIFTLINE_REDIS_URL": redis_url,
        "DRIFTLINE_REDIS_KEY_PREFIX": f"driftline:{prefix}",
        "DRIFTLINE_ARTIFACT_ROOT": artifacts.as_uri(),
        "DRIFTLINE_LOG_LEVEL": "INFO",
        "DRIFTLINE_EPOCHS": str(cfg.epochs),
        "DRIFTLINE_SEED": str(cfg.seed),
    }
    _bootstrap(cfg, env, logs, say)
    services: list[Service] = []
    trainer_env = {
        **env,
        "DRIFTLINE_MIN_NEW_LABELS": str(cfg.min_new_labels),
        "DRIFTLINE_MAX_SENSOR_EXAMPLES": str(cfg.max_examples),
        "DRIFTLINE_MAX_IMAGE_EXAMPLES": str(cfg.max_examples),
    }
    try:
        for modality in cfg.modalities:
            services.append(
                _spawn(
                    f"infer-{modality}",
                    ["infer", "--modality", modality],
                    {
                        **env,
                        "DRIFTLINE_EXACTLY_ONCE": "true",
                        "DRIFTLINE_INSTANCE_ID": f"demo-{modality}",
                    },
                    logs,
                    free_port(),
                )
            )
        services.append(_spawn("features", ["features"], env, logs, free_port()))
        services.append(_spawn("trainer", ["train"], trainer_env, logs, free_port()))
        services.append(_spawn("alerts", ["alerts"], env, logs, free_port()))
        say(f"services starting ({', '.join(s.name for s in services)}); logs in {logs}")
        deadline = time.monotonic() + 120
        for s in services[: len(cfg.modalities)]:
            while not s.ready():
                if s.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{s.name} did not become ready; see {s.log}")
                time.sleep(0.5)
        return _run_loop(cfg, kafka, services, out_dir, say, live)
    finally:
        _stop(services)


def _run_loop(
    cfg: DemoConfig,
    kafka: KafkaSettings,
    services: list[Service],
    out_dir: Path,
    say: Say,
    live: bool,
) -> RunSummary:
    watch = Watch(started=time.monotonic())
    scenario = scenarios.shifted(scenarios.load(cfg.scenario), cfg.drift_at_s)
    threads = [
        threading.Thread(target=watch.read_results, args=(kafka,), daemon=True),
        threading.Thread(target=watch.follow_registry, args=(kafka,), daemon=True),
    ]
    for th in threads:
        th.start()
    sim_stop = threading.Event()

    def on_sent(sent: sensors.SentWindow) -> None:
        with watch.lock:
            watch.ledger.record_sent(sent.event_id, sent.modality, sent.true_class, sent.t_s)

    sim_settings = SimulatorSettings(
        kafka=kafka,
        rate=cfg.rate,
        image_rate=cfg.image_rate if cfg.images else 0.0,
        assets=cfg.assets,
        seed=cfg.seed,
        label_fraction=cfg.label_fraction,
        label_delay_min_s=cfg.label_delay_s[0],
        label_delay_max_s=cfg.label_delay_s[1],
        scenario=cfg.scenario,
        drift_at_s=cfg.drift_at_s,
    )
    sim_errors: list[BaseException] = []

    def simulate() -> None:
        try:
            sensors.run(sim_settings, stop=sim_stop.is_set, progress=False, on_sent=on_sent)
        except BaseException as exc:
            sim_errors.append(exc)

    sim = threading.Thread(target=simulate, daemon=True)
    sim.start()
    view = LiveView(sys.stdout, live)
    interrupted = False
    try:
        while watch.t() < cfg.duration_s:
            time.sleep(1.0)
            dead = [s.name for s in services if s.proc.poll() is not None]
            if dead or sim_errors or watch.errors:
                why = (
                    f"stopped: {', '.join(dead)}" if dead else str((sim_errors or watch.errors)[0])
                )
                raise RuntimeError(f"the demo cannot go on ({why}); logs in {out_dir / 'logs'}")
            scrapes = {
                s.name: s.scrape() for s in services if s.name in ("features", "trainer", "alerts")
            }
            view.draw(_status_lines(cfg, watch, scenario.phase_at(watch.t()).name, scrapes))
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: finishing the run and writing the report")
    end_s = watch.t()
    sim_stop.set()
    sim.join(timeout=30)
    settle = time.monotonic() + 30
    while time.monotonic() < settle:
        with watch.lock:
            missing = watch.ledger.lost
        if missing == 0:
            break
        time.sleep(0.5)
    watch.stop.set()
    for th in threads:
        th.join(timeout=10)
    with watch.lock:
        ledger = watch.ledger
        summary = RunSummary(
            scenario=cfg.scenario,
            drift_at_s=cfg.drift_at_s if cfg.drift_at_s < end_s else None,
            seconds=end_s,
            sent=len(ledger.sent),
            scored=sum(1 for e in ledger.sent if e in ledger.seen),
            lost=ledger.lost,
            duplicated=ledger.duplicated,
            figures=[
                recovery(ledger, m, cfg.drift_at_s, end_s, cfg.tail_s, cfg.bucket_s)
                for m in cfg.modalities
            ],
            marks=list(watch.marks),
            extra={
                "interrupted": "yes" if interrupted else "no",
                "rates": _rates_text(cfg),
            },
        )
        png, md = write(ledger, summary, cfg.modalities, cfg.bucket_s, out_dir)
    say(f"report: {md} and {png}")
    return summary
