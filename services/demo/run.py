"""Run a drift-recovery demo: topics, bootstrap, services, simulator, live view, report.

Every service runs as its own process, as it would in production: inference for each
modality (exactly-once), the features app, the trainer and the alerting consumer. The
simulator runs here, so the demo knows the truth of every event it sends; a reader of
inference.results counts results by event id (nothing lost, nothing duplicated) and
scores them against that truth per model version. A fresh topic prefix per run keeps runs
apart on a shared broker.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from pathlib import Path

from driftline.services.demo.config import DemoConfig
from driftline.services.demo.processes import Say, Service, bootstrap, spawn, stop_all
from driftline.services.demo.report import RunSummary, recovery, write
from driftline.services.demo.view import LiveView, rates_text, status_lines
from driftline.services.demo.watch import Watch
from driftline.services.localstack import free_port
from driftline.services.runtime.kafka import create_topics
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.simulator import scenario as scenarios
from driftline.services.simulator import sensors
from driftline.services.simulator.settings import SimulatorSettings

READY_TIMEOUT_S = 300.0


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
        # Live accuracy by event time in buckets as short as the report's, so the view can
        # show a bucket with its labels a few seconds after its events.
        "DRIFTLINE_ACCURACY_BUCKET_S": str(max(1, round(cfg.bucket_s))),
    }
    bootstrap(cfg, env, logs, say)
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
                spawn(
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
        services.append(spawn("features", ["features"], env, logs, free_port()))
        services.append(spawn("trainer", ["train"], trainer_env, logs, free_port()))
        services.append(spawn("alerts", ["alerts"], env, logs, free_port()))
        say(f"services starting ({', '.join(s.name for s in services)}); logs in {logs}")
        # Inference must serve and the features app must have recovered its tables (the label
        # join feeds the trainer) before the fleet starts sending.
        deadline = time.monotonic() + READY_TIMEOUT_S
        for s in services:
            if s.name not in ("features",) and not s.name.startswith("infer-"):
                continue
            while not s.ready():
                if s.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{s.name} did not become ready; see {s.log}")
                time.sleep(0.5)
        return _run_loop(cfg, kafka, services, out_dir, say, live)
    finally:
        stop_all(services)


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
            view.draw(status_lines(cfg, watch, scenario.phase_at(watch.t()).name, scrapes))
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
                recovery(ledger, m, cfg.drift_at_s, end_s, cfg.tail_s, cfg.bucket_s, watch.marks)
                for m in cfg.modalities
            ],
            marks=list(watch.marks),
            extra={
                "interrupted": "yes" if interrupted else "no",
                "rates": rates_text(cfg),
            },
        )
        png, md = write(ledger, summary, cfg.modalities, cfg.bucket_s, out_dir)
    say(f"report: {md} and {png}")
    return summary
