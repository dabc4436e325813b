"""The features app against the real Kafka and Redis: statistics, the label join, accuracy, drift.

The app runs as `driftline features` in a subprocess (the way it is deployed), with this test's
topic prefix and a Redis key prefix of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.contracts import INSULATOR_CLASSES, SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.schemas.messages import (
    STATUS_CHALLENGER,
    DriftSignal,
    InferenceResult,
    Label,
    LabelledWindow,
    Lineage,
    ModelVersion,
    SensorWindow,
    TensorSpec,
)
from driftline.services.core.accuracy import BucketCounts
from driftline.services.features.accuracy import bucket_counts, bucket_hash_key, bucket_starts
from driftline.services.localstack import free_port
from driftline.services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from driftline.services.runtime.settings import KafkaSettings
from tests.integration.conftest import Endpoints
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
AVRO: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]
MODEL = "insulator-sensor"
MINUTE = 60_000


def base_minute(minutes_ago: int = 30) -> int:
    now = int(time.time() * 1000) - minutes_ago * MINUTE
    return now - now % MINUTE


# ---- the app in a subprocess ----------------------------------------------------------------


@dataclass
class FeaturesProcess:
    """`driftline features` with this test's settings; stop(), kill() and start() again."""

    kafka: KafkaSettings
    redis_url: str
    key_prefix: str
    log_path: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "DRIFTLINE_KAFKA__TOPIC_PREFIX": self.kafka.topic_prefix,
            "DRIFTLINE_REDIS_URL": self.redis_url,
            "DRIFTLINE_REDIS_KEY_PREFIX": self.key_prefix,
            "DRIFTLINE_JOIN_PARTITIONS": "3",
            "DRIFTLINE_FLUSH_INTERVAL_S": "0.5",
            "DRIFTLINE_EVICT_INTERVAL_S": "1",
            "DRIFTLINE_COMMIT_INTERVAL_S": "0.5",
            "DRIFTLINE_REDIS_RETRY_MAX_S": "1",
            "DRIFTLINE_REDIS_TIMEOUT_S": "1",
            "DRIFTLINE_LOG_LEVEL": "WARNING",
            "DRIFTLINE_DATA_DIR": str(self.log_path.parent / "faust"),
            "DRIFTLINE_SESSION_TIMEOUT_S": "6",
            "DRIFTLINE_HEARTBEAT_INTERVAL_S": "1",
        }
        env.update(self.env_overrides)
        return env

    def start(self) -> FeaturesProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driftline.services.cli",
                "features",
                "--metrics-port",
                str(self.port),
            ],
            cwd=REPO,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait(self.ready, 90, "the app to be ready")
        return self

    def ready(self) -> bool:
        self.check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"features app exited ({self.proc.returncode}):\n{self.log_tail()}"
            )

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if check():
                return
            time.sleep(0.3)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # mode dumps every task's stack to the log
            time.sleep(2)
        raise AssertionError(f"timed out waiting for {what}\n{self.log_tail(200)}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def rds(endpoints: Endpoints, key_prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(endpoints.redis_url, decode_responses=True)
    yield client
    keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
    if keys:
        client.unlink(*keys)
    client.close()


@pytest.fixture
def start_app(
    kafka: KafkaSettings, endpoints: Endpoints, key_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., FeaturesProcess]]:
    started: list[FeaturesProcess] = []

    def start(redis_url: str | None = None, **env: str) -> FeaturesProcess:
        app = FeaturesProcess(
            kafka,
            redis_url or endpoints.redis_url,
            key_prefix,
            tmp_path / f"features-{len(started)}.log",
            {f"DRIFTLINE_{k.upper()}": v for k, v in env.items()},
        )
        started.append(app)
        return app.start()

    yield start
    for app in started:
        app.stop()


# ---- data -----------------------------------------------------------------------------------


def sensor_windows(
    n: int, t0: int, *, seed: int, assets: int = 3, shift: float = 1.0, step_ms: int = 200
) -> list[SensorWindow]:
    """Windows of a stable fleet; `shift` scales the leakage current (a drifted fleet)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = rng.normal(0.0, 1.0, (len(SENSOR_CHANNELS), SENSOR_SAMPLES)).astype(np.float32)
        x[0] = x[0] * shift + 2.0 * shift
        out.append(
            SensorWindow(
                event_id=f"s{seed}-{i}",
                asset_id=f"insulator-{i % assets:05d}",
                sensor_id="probe-1",
                event_time_ms=t0 + i * step_ms,
                sample_rate_hz=1.0,
                channels=list(SENSOR_CHANNELS),
                n_samples=SENSOR_SAMPLES,
                samples=x.astype("<f4").tobytes(),
            )
        )
    return out


def result_for(
    window: SensorWindow, predicted: str, confidence: float, version: int = 1
) -> InferenceResult:
    return InferenceResult(
        event_id=window.event_id,
        asset_id=window.asset_id,
        modality="sensor",
        model_name=MODEL,
        model_version=version,
        classes=list(INSULATOR_CLASSES),
        probabilities=np.full(4, 0.25, "<f4").tobytes(),
        predicted_class=predicted,
        confidence=confidence,
        event_time_ms=window.event_time_ms,
        scored_time_ms=window.event_time_ms + 20,
    )


def produce(kafka: KafkaSettings, topic: str, records: list[tuple[str, bytes]]) -> None:
    prod = producer(kafka)
    tracker = DeliveryTracker()
    for key, value in records:
        prod.produce(topic, key=key, value=value, headers=AVRO, on_delivery=tracker)
    flush_or_raise(prod, tracker)


def produce_results(kafka: KafkaSettings, results: list[InferenceResult]) -> None:
    produce(kafka, kafka.topics.inference_results, [(r.asset_id, codec.encode(r)) for r in results])


def produce_windows(kafka: KafkaSettings, windows: list[SensorWindow]) -> list[bytes]:
    values = [codec.encode(w) for w in windows]
    produce(
        kafka,
        kafka.topics.sensor_windows,
        [(w.asset_id, v) for w, v in zip(windows, values, strict=True)],
    )
    return values


def produce_labels(kafka: KafkaSettings, labels: list[Label]) -> list[bytes]:
    values = [codec.encode(lab) for lab in labels]
    produce(
        kafka,
        kafka.topics.feedback_labels,
        [(lab.asset_id or "", v) for lab, v in zip(labels, values, strict=True)],
    )
    return values


def stats_oracle(results: list[InferenceResult]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (asset, minute): what a batch computation over the same results gives."""
    groups: dict[tuple[str, int], list[InferenceResult]] = {}
    for r in results:
        groups.setdefault((r.asset_id, r.event_time_ms - r.event_time_ms % MINUTE), []).append(r)
    out = {}
    for key, rs in groups.items():
        conf = np.array([r.confidence for r in rs])
        out[key] = {
            "count": len(rs),
            "mean": float(conf.mean()),
            "p50": float(np.percentile(conf, 50)),
            "p90": float(np.percentile(conf, 90)),
            "low": float(np.mean(conf < 0.6)),
            "mix": {
                c: sum(r.predicted_class == c for r in rs) / len(rs) for c in INSULATOR_CLASSES
            },
            "event_time_ms": max(r.event_time_ms for r in rs),
        }
    return out


def stats_key(prefix: str, asset: str, window: str, start: int, version: int = 1) -> str:
    return f"{prefix}stats:{asset}:{MODEL}:v{version}:{window}:{start}"


def random_results(
    windows: list[SensorWindow], seed: int, version: int = 1
) -> list[InferenceResult]:
    rng = np.random.default_rng(seed)
    return [
        result_for(w, INSULATOR_CLASSES[int(rng.integers(0, 4))], float(rng.beta(5, 2)), version)
        for w in windows
    ]


# ---- tests ----------------------------------------------------------------------------------


def test_window_statistics_appear_in_redis_and_metrics(
    kafka: KafkaSettings,
    rds: redis.Redis,
    key_prefix: str,
    start_app: Callable[..., FeaturesProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    t0 = base_minute()
    windows = sensor_windows(600, t0, seed=1, step_ms=250)  # 150 s: three 1-minute buckets
    results = random_results(windows, seed=1)
    produce_results(kafka, results)
    app = start_app(role="stats")
    oracle = stats_oracle(results)
    newest = max(start for _, start in oracle)

    def written() -> bool:
        asset_hash = rds.hgetall(f"{key_prefix}asset:insulator-00000")
        return asset_hash.get(f"{MODEL}:v1:10m:count") == str(
            sum(v["count"] for (a, _), v in oracle.items() if a == "insulator-00000")
        )

    app.wait(written, 60, "the hopping window of every result in Redis")
    for (asset, start), want in oracle.items():
        got = rds.hgetall(stats_key(key_prefix, asset, "1m", start))
        assert int(got["count"]) == want["count"]
        assert float(got["confidence_mean"]) == pytest.approx(want["mean"], abs=1e-6)
        assert abs(float(got["confidence_p50"]) - want["p50"]) <= 0.01
        assert abs(float(got["confidence_p90"]) - want["p90"]) <= 0.01
        assert float(got["low_confidence_rate"]) == pytest.approx(want["low"], abs=1e-6)
        for cls, share in want["mix"].items():
            assert float(got[f"class.{cls}"]) == pytest.approx(share, abs=1e-6)
        assert int(got["event_time_ms"]) == want["event_time_ms"]
        assert 0 < rds.pttl(stats_key(key_prefix, asset, "1m", start)) <= 86_400_000
    asset_hash = rds.hgetall(f"{key_prefix}asset:insulator-00001")
    assert int(asset_hash[f"{MODEL}:v1:1m:window_start_ms"]) == newest
    assert int(asset_hash[f"{MODEL}:v1:1m:count"]) == oracle[("insulator-00001", newest)]["count"]
    assert app.metric("driftline_feature_events_total", outcome="accepted") == len(results)
    assert app.metric("driftline_feature_writes_total", kind="stats") > 0
    assert app.metric("driftline_feature_store_up") == 1.0

    from driftline.services.cli import main

    code = main(
        [
            "features",
            "get",
            "insulator-00001",
            "--redis-url",
            app.redis_url,
            "--redis-key-prefix",
            key_prefix,
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert f"{MODEL} v1" in printed
    assert str(oracle[("insulator-00001", newest)]["count"]) in printed


def test_labels_join_into_training_windows_the_trainer_reads(
    kafka: KafkaSettings,
    rds: redis.Redis,
    key_prefix: str,
    start_app: Callable[..., FeaturesProcess],
) -> None:
    from driftline.trainer.inputs import decode_labelled

    t0 = base_minute()
    windows = sensor_windows(41, t0, seed=2)
    truth = [INSULATOR_CLASSES[i % 4] for i in range(41)]
    # Predictions right for e0..e29, wrong for e30..e40.
    results = [
        result_for(w, truth[i] if i < 30 else INSULATOR_CLASSES[(i + 1) % 4], 0.8)
        for i, w in enumerate(windows)
    ]
    app = start_app(role="all", label_wait_s="0", join_retention_s="3600")
    inputs = produce_windows(kafka, windows)
    produce_results(kafka, results)
    join_topic = f"{kafka.topic_prefix}driftline-features-join"
    app.wait(
        lambda: app.metric("driftline_events_consumed_total", topic=join_topic) >= 82,
        60,
        "inputs and results to reach the join",
    )
    at = windows[-1].event_time_ms + MINUTE
    labels = [
        Label(
            event_id=w.event_id,
            asset_id=w.asset_id,
            true_class=truth[i],
            source="inspection",
            label_time_ms=at,
        )
        for i, w in enumerate(windows[:40])
    ]
    labels += [
        Label(
            event_id=w.event_id,
            asset_id=w.asset_id,
            true_class=truth[i],
            source="inspection",
            label_time_ms=at + 1,
        )
        for i, w in enumerate(windows[:5])
    ]  # re-sent: idempotent
    labels.append(
        Label(
            event_id=windows[5].event_id,
            asset_id=windows[5].asset_id,
            true_class="cracked",
            source="other",
            label_time_ms=at,
        )
    )
    unknown = [
        Label(
            event_id=f"ghost-{i}",
            asset_id=windows[i].asset_id,
            true_class="healthy",
            source="x",
            label_time_ms=t0,
        )
        for i in range(3)
    ]
    expired = Label(
        event_id=windows[40].event_id,
        asset_id=windows[40].asset_id,
        true_class=truth[40],
        source="x",
        label_time_ms=windows[40].event_time_ms + 3_600_001,
    )
    label_values = produce_labels(kafka, [*labels, *unknown, expired])

    emitted = drain(kafka, kafka.topics.training_windows, expect=40, timeout_s=60)
    got = [codec.decode(LabelledWindow, m.value()) for m in emitted]
    assert sorted(w.event_id for w in got) == sorted(w.event_id for w in windows[:40]), "each once"
    by_id = {w.event_id: w for w in got}
    for i, w in enumerate(windows[:40]):
        lw = by_id[w.event_id]
        assert lw.input == inputs[i], "the original input bytes"
        assert lw.input_type == "SensorWindow"
        assert lw.true_class == truth[i]
        assert (lw.model_name, lw.model_version) == (MODEL, 1)
        assert lw.predicted_class == results[i].predicted_class
    example = decode_labelled(emitted[0].value())
    assert example.x.shape == (len(SENSOR_CHANNELS), SENSOR_SAMPLES)

    dead = drain(kafka, kafka.topics.dlq("feedback.labels"), expect=4, timeout_s=30)
    assert len(dead) == 4
    by_event = {}
    for m in dead:
        hdrs = dict(h.header_items(m.headers()))
        assert hdrs["driftline-error-class"] == b"unknown_event"
        assert hdrs["driftline-source-topic"] == kafka.topics.feedback_labels.encode()
        by_event[codec.decode(Label, m.value()).event_id] = hdrs["driftline-error-message"]
        assert m.value() in label_values, "the original label bytes"
    assert {k for k, v in by_event.items() if v.startswith(b"unknown")} == {
        u.event_id for u in unknown
    }
    assert by_event[windows[40].event_id].startswith(b"expired")

    def accuracy() -> BucketCounts:
        index = rds.hgetall(f"{key_prefix}accuracy:{MODEL}:v1")
        starts = bucket_starts(index, 1000)
        size = int(index.get("bucket_ms", "0"))
        total = BucketCounts()
        for s in starts:  # every event-time bucket, every partition's fields summed
            total = total.merged(
                bucket_counts(rds.hgetall(bucket_hash_key(key_prefix, (MODEL, 1), size, s)))
            )
        return total

    app.wait(lambda: accuracy().labelled == 40, 30, "live accuracy in Redis")
    assert accuracy().correct == 30
    assert (
        app.metric("driftline_accuracy_labelled_total", model=MODEL, version="1", outcome="correct")
        == 30
    )
    assert app.metric("driftline_labels_joined_total", outcome="emit") == 40
    assert app.metric("driftline_labels_joined_total", outcome="duplicate") == 6
    assert app.metric("driftline_labels_joined_total", outcome="unknown") == 3
    assert app.metric("driftline_labels_joined_total", outcome="expired") == 1


def publish_version(
    kafka: KafkaSettings, version: int, train: np.ndarray, confidence: np.ndarray
) -> None:
    from driftline.services.runtime.registry import publish
    from driftline.trainer.reference import reference_profile

    probs = np.zeros((len(confidence), 4), np.float32)
    probs[:, 0] = confidence
    probs[:, 1:] = ((1 - confidence) / 3)[:, None]
    mv = ModelVersion(
        name=MODEL,
        version=version,
        modality="sensor",
        artifact_uri=f"file:///nowhere/v{version}.onnx",
        sha256="0" * 64,
        inputs=[TensorSpec(name="samples", dtype="float32", shape=[-1, 4, 64])],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=[-1, 4])],
        classes=list(INSULATOR_CLASSES),
        lineage=Lineage(source="test"),
        status=STATUS_CHALLENGER,
        created_time_ms=int(time.time() * 1000),
        reference=reference_profile("sensor", train, probs),
    )
    publish(kafka, kafka.topics.models_registry, mv, as_champion=False)


def test_drift_signal_when_inputs_shift_from_the_reference(
    kafka: KafkaSettings,
    rds: redis.Redis,
    key_prefix: str,
    start_app: Callable[..., FeaturesProcess],
) -> None:
    rng = np.random.default_rng(9)
    reference = sensor_windows(2000, 0, seed=90)
    train = np.stack([w.array() for w in reference])
    ref_conf = rng.beta(8, 2, 2000)
    publish_version(kafka, 1, train, ref_conf)
    publish_version(kafka, 2, train, ref_conf)
    t0 = base_minute()
    stable = sensor_windows(400, t0, seed=91)
    shifted = sensor_windows(400, t0, seed=92, shift=3.0)
    produce_windows(kafka, stable + shifted)
    produce_results(
        kafka,
        [
            result_for(w, "healthy", float(c), 1)
            for w, c in zip(stable, rng.beta(8, 2, 400), strict=True)
        ]
        + [
            result_for(w, "healthy", float(c), 2)
            for w, c in zip(shifted, rng.beta(2, 2, 400), strict=True)
        ],
    )
    app = start_app(role="all", drift_interval_s="2", drift_min_samples="300")

    def evaluated(version: int) -> float:
        return app.metric("driftline_drift_samples", model=MODEL, version=str(version))

    app.wait(lambda: evaluated(1) >= 400 and evaluated(2) >= 400, 60, "both versions evaluated")
    signals: dict[int, DriftSignal] = {}
    for m in drain(kafka, kafka.topics.drift_signals, expect=2, timeout_s=30):
        s = codec.decode(DriftSignal, m.value())
        signals[s.model_version] = s  # the latest evaluation of each version
    assert {v: s.sample_count for v, s in signals.items()} == {1: 400, 2: 400}
    assert not signals[1].drifted
    assert signals[1].score < signals[1].threshold
    assert signals[2].drifted
    assert signals[2].feature_scores[f"{SENSOR_CHANNELS[0]}.mean"] > signals[2].threshold
    assert signals[2].feature_scores["confidence"] > 0.1
    assert signals[2].statistic == "psi"
    drift = rds.hgetall(f"{key_prefix}drift:{MODEL}:v2")
    assert drift["drifted"] == "1"
    assert float(drift["score"]) == pytest.approx(signals[2].score, abs=1e-5)
    assert app.metric("driftline_drift_score", model=MODEL, version="2", feature="max") > 0.25
    assert app.metric("driftline_drift_detected", model=MODEL, version="1") == 0.0
