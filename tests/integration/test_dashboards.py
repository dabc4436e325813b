"""The dashboards and alert rules against a real Prometheus scraping the running services.

Inference (sensor), alerts and the trainer run in threads, the features app as `driftline
features` in a subprocess, each serving /metrics on a free port. Debian's `prometheus` binary
scrapes them every second with the jobs and target labels of deploy/prometheus/prometheus.yml
(only the addresses change) and loads deploy/prometheus/rules. The simulator pushes a labelled
fleet and a few broken records through the whole loop: scoring, dead letters, alerts, the label
join, live accuracy, drift, a training run with its gate decision. Then every panel query of
every dashboard (template variables substituted) and every alert expression goes through
Prometheus's HTTP API: no query may fail, and every panel must return data.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES
from driftline.schemas.messages import STATUS_CHAMPION, Lineage, ModelVersion
from driftline.services.alerts import service as alerts_service
from driftline.services.alerts.settings import AlertsSettings
from driftline.services.inference import service as inference_service
from driftline.services.inference.settings import InferenceSettings
from driftline.services.localstack import free_port
from driftline.services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.shutdown import StopFlag
from driftline.services.simulator import sensors
from driftline.services.simulator.settings import SimulatorSettings
from driftline.trainer.settings import TrainerSettings
from tests.integration.conftest import Endpoints
from tests.unit.test_dashboards_static import (
    PanelQuery,
    dashboards,
    panel_queries,
    rule_expressions,
    substitute,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(480),
]

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES = REPO / "deploy" / "prometheus" / "rules"
# The jobs this test runs; the config's other jobs are left out, with the reason.
STARTED = ("inference-sensor", "features", "alerts", "trainer")
NOT_STARTED = {
    "inference-image": "scoring photos needs an image model (minutes of CPU training); its "
    "panels are the inference ones, proven here with modality=sensor",
}
# Panels whose data this test cannot produce, with the reason; every other panel must answer.
# (Empty: every panel of every dashboard returns data here.)
PANELS_WITHOUT_DATA: dict[str, str] = {
    "retraining.json / Age of the training data / B": "the time since the trainer's last change "
    "point exists only once it found one, and the simulator here does not drift",
}
DATA_TIMEOUT_S = 300.0


# ---- the services --------------------------------------------------------------------------


@dataclass
class InThread:
    """A service's run() in a daemon thread, stopped through its stop flag."""

    name: str
    target: Callable[[StopFlag], Any]
    stop: StopFlag = field(default_factory=StopFlag)
    errors: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> InThread:
        def body() -> None:
            try:
                self.target(self.stop)
            except BaseException as exc:
                self.errors.append(exc)

        self.thread = threading.Thread(target=body, name=self.name, daemon=True)
        self.thread.start()
        return self

    def check(self) -> None:
        assert not self.errors, f"{self.name} failed: {self.errors!r}"

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=60)
            assert not self.thread.is_alive(), f"{self.name} did not stop"


@dataclass
class Subprocess:
    """`driftline <args>` in a subprocess with its log in a file."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Subprocess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "driftline.services.cli", *self.args],
                cwd=REPO,
                env={**os.environ, **self.env, "PYTHONWARNINGS": "ignore"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def check(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.args[0]} exited ({self.proc.returncode}):\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ---- Prometheus ----------------------------------------------------------------------------


def prometheus_config(ports: dict[str, int], self_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with this test's addresses, 1 s scrapes, the repo rules."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(RULES / "*.yml")]
    jobs = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        port = self_port if name == "prometheus" else ports.get(name)
        if port is None:
            assert name in NOT_STARTED, f"job {name} is neither started nor listed as not started"
            continue
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


class Prometheus:
    def __init__(self, binary: str, folder: Path, config: dict[str, Any], port: int) -> None:
        self.port = port
        self.log_path = folder / "prometheus.log"
        path = folder / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the error as JSON
            return json.loads(exc.read())

    def query(self, expr: str) -> dict[str, Any]:
        body: dict[str, Any] = self.get("/api/v1/query", query=expr)
        return body

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def has_data(body: dict[str, Any]) -> bool:
    """A successful query with at least one finite value."""
    if body.get("status") != "success":
        return False
    data = body["data"]
    if data["resultType"] == "scalar":
        return math.isfinite(float(data["result"][1]))
    return any(math.isfinite(float(series["value"][1])) for series in data["result"])


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def champion(kafka: KafkaSettings, tiny_sensor_model: object, tmp_path: Path) -> ModelVersion:
    """Version 1 with a reference profile, so the features app measures its drift."""
    from driftline.services.simulator.fleet import labelled_dataset
    from driftline.trainer.bootstrap import TrainedModel
    from driftline.trainer.export import onnx_probabilities
    from driftline.trainer.publish import publish_version
    from driftline.trainer.reference import reference_profile

    assert isinstance(tiny_sensor_model, TrainedModel)
    x, _ = labelled_dataset(600, seed=12)
    probs = onnx_probabilities(tiny_sensor_model.exported.onnx_bytes, x)
    return publish_version(
        kafka=kafka,
        artifact_root=(tmp_path / "artifacts").as_uri(),
        name=MODEL_NAMES["sensor"],
        version=1,
        modality="sensor",
        exported=tiny_sensor_model.exported,
        model=tiny_sensor_model.model,
        classes=list(INSULATOR_CLASSES),
        metrics={"holdout_macro_f1": tiny_sensor_model.report.holdout_macro_f1},
        lineage=Lineage(source="test"),
        status=STATUS_CHAMPION,
        reference=reference_profile("sensor", x, probs),
    )


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip("prometheus not installed (scripts/setup installs Debian's package as root)")
    return found


@pytest.fixture
def running(
    kafka: KafkaSettings,
    endpoints: Endpoints,
    champion: ModelVersion,  # noqa: ARG001  (published first; marks cannot apply to fixtures)
    tmp_path: Path,
) -> Iterator[tuple[dict[str, int], list[InThread | Subprocess]]]:
    ports = {job: free_port() for job in STARTED}
    artifacts = (tmp_path / "artifacts").as_uri()
    services: list[InThread | Subprocess] = [
        InThread(
            "inference-sensor",
            lambda stop: inference_service.run(
                InferenceSettings(
                    kafka=kafka,
                    metrics_port=ports["inference-sensor"],
                    max_wait_ms=20,
                    registry_timeout_s=60,
                    statistics_interval_ms=1000,
                ),
                stop,
            ),
        ),
        InThread(
            "alerts",
            lambda stop: alerts_service.run(
                AlertsSettings(kafka=kafka, metrics_port=ports["alerts"], max_wait_ms=50), stop
            ),
        ),
        InThread(
            "trainer",
            lambda stop: _run_trainer(
                TrainerSettings(
                    kafka=kafka,
                    metrics_port=ports["trainer"],
                    artifact_root=artifacts,
                    device="cpu",
                    torch_threads=1,
                    epochs=1,
                    min_new_labels=60,
                    min_labels=60,
                    min_holdout=10,
                    max_age_s=None,
                    poll_timeout_s=0.2,
                ),
                stop,
            ),
        ),
        Subprocess(
            ["features", "--metrics-port", str(ports["features"])],
            {
                "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
                "DRIFTLINE_REDIS_URL": endpoints.redis_url,
                "DRIFTLINE_REDIS_KEY_PREFIX": f"dash{uuid.uuid4().hex[:8]}:",
                "DRIFTLINE_DATA_DIR": str(tmp_path / "faust"),
                "DRIFTLINE_JOIN_PARTITIONS": "3",
                "DRIFTLINE_FLUSH_INTERVAL_S": "0.5",
                "DRIFTLINE_DRIFT_INTERVAL_S": "2",
                "DRIFTLINE_DRIFT_MIN_SAMPLES": "100",
                "DRIFTLINE_SESSION_TIMEOUT_S": "6",
                "DRIFTLINE_HEARTBEAT_INTERVAL_S": "1",
                "DRIFTLINE_LOG_LEVEL": "WARNING",
            },
            tmp_path / "features.log",
        ),
    ]
    try:
        for svc in services:
            svc.start()
        # Everything consumes before the load starts (the features app creates its join topic
        # when it starts; input produced before its subscriptions would only arrive later).
        deadline = time.monotonic() + 120
        waiting = dict(ports)
        while waiting:
            for svc in services:
                svc.check()
            waiting = {job: port for job, port in waiting.items() if not _ready(port)}
            assert time.monotonic() < deadline, f"not ready after 120s: {sorted(waiting)}"
            time.sleep(0.3)
        yield ports, services
    finally:
        for svc in services:
            svc.close()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _run_trainer(settings: TrainerSettings, stop: StopFlag) -> None:
    from driftline.trainer import service as trainer_service

    trainer_service.run(settings, stop)


def _send_broken_records(kafka: KafkaSettings, n: int = 5) -> None:
    """Undecodable sensor windows: the dead-letter panels need some."""
    prod = producer(kafka)
    tracker = DeliveryTracker()
    for i in range(n):
        prod.produce(
            kafka.topics.sensor_windows,
            key=f"insulator-{i:05d}".encode(),
            value=b"\x02\x99 not avro",
            on_delivery=tracker,
        )
    flush_or_raise(prod, tracker)


# ---- the test ------------------------------------------------------------------------------


def test_every_panel_and_alert_rule_query_works_on_live_metrics(
    kafka: KafkaSettings,
    running: tuple[dict[str, int], list[InThread | Subprocess]],
    prometheus_binary: str,
    tmp_path: Path,
) -> None:
    ports, services = running
    prom_port = free_port()
    prom = Prometheus(prometheus_binary, tmp_path, prometheus_config(ports, prom_port), prom_port)
    simulator = InThread(
        "simulator",
        lambda stop: sensors.run(
            SimulatorSettings(
                kafka=kafka,
                rate=150,
                assets=30,
                seed=17,
                label_fraction=0.5,
                label_delay_min_s=0.2,
                label_delay_max_s=1.0,
            ),
            stop=stop,
            progress=False,
        ),
    )
    try:
        deadline = time.monotonic() + 60
        while not prom.ready():
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        _send_broken_records(kafka)
        simulator.start()

        queries = [q for q in panel_queries() if q.name not in PANELS_WITHOUT_DATA]
        missing: list[PanelQuery] = queries
        deadline = time.monotonic() + DATA_TIMEOUT_S
        while missing and time.monotonic() < deadline:
            for svc in [*services, simulator]:
                svc.check()
            missing = [q for q in missing if not has_data(prom.query(substitute(q.expr)))]
            if missing:
                time.sleep(2)

        # Every query runs without error; every panel query has data (the simulator still runs).
        errors = {}
        empty = []
        for q in panel_queries():
            body = prom.query(substitute(q.expr))
            if body.get("status") != "success":
                errors[q.name] = body.get("error")
            elif q.name not in PANELS_WITHOUT_DATA and not has_data(body):
                empty.append(q.name)
        for name, expr in rule_expressions():
            body = prom.query(expr)
            if body.get("status") != "success":
                errors[f"rule {name}"] = body.get("error")
        assert not errors, errors
        assert not empty, f"panels without data after {DATA_TIMEOUT_S:.0f}s: {empty}"
        assert len(queries) + len(PANELS_WITHOUT_DATA) == len(panel_queries()) > 30

        # The template variables list what the services export.
        for board in dashboards().values():
            for var in board["templating"]["list"]:
                selector = var["definition"].split("(", 1)[1].rsplit(",", 1)[0]
                values = prom.get(
                    f"/api/v1/label/{var['name']}/values", **{"match[]": substitute(selector)}
                )
                assert values["status"] == "success", values
                want = "sensor" if var["name"] == "modality" else MODEL_NAMES["sensor"]
                assert want in values["data"], (var["name"], values["data"])

        # The rules loaded from deploy/prometheus/rules evaluate without errors.
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        assert len(loaded) == len(rule_expressions())
        assert all(r["health"] in ("ok", "unknown") for r in loaded), [
            (r["name"], r.get("lastError")) for r in loaded if r["health"] == "err"
        ]
        targets = prom.get("/api/v1/targets")["data"]["activeTargets"]
        assert {t["labels"]["job"] for t in targets if t["health"] == "up"} == {
            "prometheus",
            *STARTED,
        }
    finally:
        simulator.close()
        prom.close()


def test_prometheus_config_for_the_test_keeps_the_deployed_labels() -> None:
    """The generated config differs from the deployed one only in addresses and intervals."""
    ports = {job: 10000 + i for i, job in enumerate(STARTED)}
    config = prometheus_config(ports, 9999)
    deployed = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    by_name = {j["job_name"]: j for j in deployed["scrape_configs"]}
    assert {j["job_name"] for j in config["scrape_configs"]} | set(NOT_STARTED) == set(by_name)
    for job in config["scrape_configs"]:
        original = by_name[job["job_name"]]
        for key in ("honor_labels", "relabel_configs", "metric_relabel_configs"):
            assert job.get(key) == original.get(key), (job["job_name"], key)
