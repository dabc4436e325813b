"""The trainer end to end on the real broker: labelled windows in, gated versions out, and
inference consumers that swap to a better model, refuse bad ones, and follow a rollback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES, SENSOR_CHANNELS
from driftline.schemas.messages import (
    STATUS_CHAMPION,
    STATUS_REJECTED,
    STATUS_RETIRED,
    CameraImage,
    DriftSignal,
    LabelledWindow,
    Lineage,
    ModelVersion,
    SensorWindow,
)
from driftline.services.inference import service as inference
from driftline.services.inference.handler import BatchStats
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime import metrics as m
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import FsspecArtifactStore
from driftline.services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.shutdown import StopFlag
from driftline.services.runtime.signing import generate_keypair
from driftline.services.simulator import sensors
from driftline.services.simulator.fleet import SensorConditions, labelled_dataset
from driftline.services.simulator.images import encode_png, labelled_images
from driftline.services.simulator.settings import SimulatorSettings
from driftline.trainer import service as trainer
from driftline.trainer.bootstrap import TrainedModel
from driftline.trainer.metrics import TrainerMetrics
from driftline.trainer.publish import KafkaRegistryWriter, build_version
from driftline.trainer.runs import OUTCOME_PROMOTED, OUTCOME_REJECTED, RunOutcome
from driftline.trainer.settings import TrainerSettings
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SENSOR = MODEL_NAMES["sensor"]
# A world the bootstrap champion never saw: wetter, with stronger leakage and weaker discharge.
DRIFTED = SensorConditions(leakage_gain=2.5, discharge_gain=0.4, humidity_mean=80.0)


AVRO: list[tuple[str, str | bytes | None]] = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]
T0_MS = 1_700_000_000_000


def sensor_window_bytes(event_id: str, samples: npt.NDArray[np.float32], t_ms: int) -> bytes:
    return codec.encode(
        SensorWindow(
            event_id=event_id,
            asset_id=f"insulator-{zlib.crc32(event_id.encode()) % 40:05d}",
            sensor_id="s",
            event_time_ms=t_ms,
            sample_rate_hz=1.0,
            channels=list(SENSOR_CHANNELS)[: samples.shape[0]],
            n_samples=samples.shape[1],
            samples=samples.astype("<f4").tobytes(),
        )
    )


def labelled_window(
    event_id: str,
    payload: bytes,
    true_class: str,
    t_ms: int,
    modality: str = "sensor",
    input_type: str = "SensorWindow",
) -> bytes:
    return codec.encode(
        LabelledWindow(
            event_id=event_id,
            asset_id=f"insulator-{zlib.crc32(event_id.encode()) % 40:05d}",
            modality=modality,
            event_time_ms=t_ms,
            label_time_ms=t_ms + 60_000,
            true_class=true_class,
            input_type=input_type,
            input=payload,
            predicted_class="healthy",
            confidence=0.5,
            model_name="insulator-sensor",
            model_version=1,
        )
    )


def camera_bytes(image: bytes, t_ms: int) -> bytes:
    return codec.encode(
        CameraImage(
            event_id="pic",
            asset_id="insulator-00001",
            camera_id="cam",
            event_time_ms=t_ms,
            content_type="image/png",
            image=image,
        )
    )


def labelled_sensor_windows(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], *, start: int = 0, prefix: str = "lw"
) -> list[bytes]:
    """One LabelledWindow per row, in event-time order starting at T0 + start seconds."""
    out = []
    for i, (samples, label) in enumerate(zip(x, y.tolist(), strict=True)):
        t = T0_MS + (start + i) * 1000
        eid = f"{prefix}-{start + i}"
        out.append(
            labelled_window(eid, sensor_window_bytes(eid, samples, t), INSULATOR_CLASSES[label], t)
        )
    return out


def produce(
    kafka: KafkaSettings, topic: str, values: list[bytes], keys: list[bytes] | None = None
) -> None:
    prod = producer(kafka)
    tracker = DeliveryTracker()
    for i, value in enumerate(values):
        key = keys[i] if keys is not None else f"insulator-{i % 17:05d}".encode()
        prod.produce(topic, key=key, value=value, headers=AVRO, on_delivery=tracker)
    flush_or_raise(prod, tracker)


def trainer_settings(kafka: KafkaSettings, tmp_path: Path, **kw: Any) -> TrainerSettings:
    base: dict[str, Any] = {
        "kafka": kafka,
        "artifact_root": (tmp_path / "trainer-artifacts").as_uri(),
        "epochs": 2,
        "device": "cpu",
        "min_new_labels": 600,
        "min_labels": 200,
        "min_holdout": 50,
        "max_age_s": None,
        "retry_after_s": 3600.0,
        "poll_timeout_s": 0.2,
        "registry_timeout_s": 20.0,
    }
    base.update(kw)
    return TrainerSettings(**base)


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    tick: Callable[[], None] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        if tick is not None:
            tick()
        time.sleep(0.2)


class Running:
    """A service loop in a daemon thread, stopped and checked for errors on close()."""

    def __init__(self, target: Callable[[StopFlag], object]) -> None:
        self.stop = StopFlag()
        self.errors: list[BaseException] = []
        self._target = target
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._target(self.stop)
        except BaseException as exc:
            self.errors.append(exc)

    def start(self) -> Running:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "service did not stop within 60s of being asked"
        assert not self.errors, self.errors


class RunningInference(Running):
    def __init__(self, settings: InferenceSettings) -> None:
        self.batches: list[BatchStats] = []
        self.metrics = CollectorRegistry()
        super().__init__(
            lambda stop: inference.run(settings, stop, self.batches.append, self.metrics)
        )

    def rejections(self, reason: str) -> float:
        labels = {"model": SENSOR, "outcome": "rejected", "reason": reason}
        return self.metrics.get_sample_value(m.MODEL_SWAPS, labels) or 0.0

    def version(self) -> int | None:
        scored = [b for b in self.batches if b.scored]
        return scored[-1].model_version if scored else None

    def versions(self) -> list[int]:
        """Model versions in the order they served, consecutive repeats folded."""
        out: list[int] = []
        for b in self.batches:
            if b.scored and (not out or out[-1] != b.model_version):
                out.append(b.model_version)
        return out


class RunningTrainer(Running):
    def __init__(self, settings: TrainerSettings) -> None:
        self.outcomes: list[RunOutcome] = []
        super().__init__(lambda stop: trainer.run(settings, stop, on_outcome=self.outcomes.append))


def feed_sensor_windows(kafka: KafkaSettings, seed: int, count: int = 100) -> None:
    """A burst of sensor windows for the inference consumers to score."""
    sensors.run(
        SimulatorSettings(kafka=kafka, count=count, rate=5000, assets=20, seed=seed), progress=False
    )


@pytest.fixture
def inference_settings(kafka: KafkaSettings) -> InferenceSettings:
    return InferenceSettings(kafka=kafka, max_batch=128, max_wait_ms=20, registry_timeout_s=30)


def registry_snapshot(kafka: KafkaSettings) -> registry.RegistrySnapshot:
    return registry.read_snapshot(kafka, kafka.topics.models_registry)


@pytest.mark.usefixtures("sensor_champion")
def test_labelled_windows_trigger_a_training_and_the_consumer_swaps_to_the_better_model(
    kafka: KafkaSettings,
    inference_settings: InferenceSettings,
    tmp_path: Path,
) -> None:
    consumer = RunningInference(inference_settings).start()
    running = RunningTrainer(
        trainer_settings(kafka, tmp_path, min_new_labels=900, epochs=3)
    ).start()
    try:
        wait_for(
            lambda: consumer.version() == 1, 60, "v1 serving", lambda: feed_sensor_windows(kafka, 1)
        )
        x, y = labelled_dataset(900, seed=5, world=DRIFTED)
        produce(kafka, kafka.topics.training_windows, labelled_sensor_windows(x, y))
        wait_for(lambda: bool(running.outcomes), 180, "a training run")
        outcome = running.outcomes[0]
        assert outcome.outcome == OUTCOME_PROMOTED, outcome.summary()
        assert outcome.trigger == "new_labels"
        mv = outcome.version
        assert mv is not None
        assert (mv.version, mv.status) == (2, STATUS_CHAMPION)
        m_ = mv.metrics
        assert m_["holdout_macro_f1"] >= m_["champion_holdout_macro_f1"] + 0.01
        assert mv.lineage.source == kafka.topics.training_windows
        assert mv.lineage.parent_version == 1
        covered = sum(r.end_offset - r.start_offset for r in mv.lineage.ranges)
        assert covered == 900, "the lineage names exactly the offsets that trained it"
        assert registry_snapshot(kafka).champions[SENSOR].version == 2
        wait_for(
            lambda: consumer.version() == 2,
            60,
            "the swap to v2",
            lambda: feed_sensor_windows(kafka, 2),
        )
        assert consumer.versions() == [1, 2], "one swap, and no batch went back to v1"
    finally:
        running.close()
        consumer.close()


@pytest.mark.usefixtures("sensor_champion")
def test_a_worse_challenger_is_recorded_with_both_scores_and_not_promoted(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    # A labelling bug: the older windows carry a wrong class; the most recent are right again.
    x, y = labelled_dataset(600, seed=8)
    wrong = (y + 1) % len(INSULATOR_CLASSES)
    labels = np.concatenate([wrong[:450], y[450:]])
    produce(kafka, kafka.topics.training_windows, labelled_sensor_windows(x, labels))
    outcomes = trainer.run(
        trainer_settings(kafka, tmp_path, holdout_fraction=0.25),
        StopFlag(),
        now=True,
        modality="sensor",
        once=True,
    )
    assert [o.outcome for o in outcomes] == [OUTCOME_REJECTED], [o.summary() for o in outcomes]
    mv = outcomes[0].version
    assert mv is not None
    assert mv.status == STATUS_REJECTED
    assert mv.metrics["holdout_macro_f1"] < mv.metrics["champion_holdout_macro_f1"]
    snap = registry_snapshot(kafka)
    assert snap.champions[SENSOR].version == 1, "the champion pointer did not move"
    assert snap.versions[SENSOR][2].status == STATUS_REJECTED


def test_bad_labelled_windows_are_dead_lettered_once_with_their_reason(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    x, y = labelled_dataset(30, seed=2)
    good = labelled_sensor_windows(x, y)
    ok = x[0]
    t = T0_MS
    bad = [
        (
            labelled_window("short", sensor_window_bytes("short", ok[:3], t), "healthy", t),
            dl.BAD_SHAPE,
        ),
        (
            labelled_window("rusty", sensor_window_bytes("rusty", ok, t), "rusty", t),
            dl.UNKNOWN_CLASS,
        ),
        (labelled_window("empty", b"", "cracked", t), dl.MISSING_INPUT),
        (b"\x02not avro", dl.UNDECODABLE),
        (
            labelled_window(
                "pic", camera_bytes(b"not a png", t), "cracked", t, "image", "CameraImage"
            ),
            dl.BAD_IMAGE,
        ),
    ]
    photos, _ = labelled_images(1, seed=0)
    photo = labelled_window(
        "ok-pic", camera_bytes(encode_png(photos[0]), t), "healthy", t, "image", "CameraImage"
    )
    values = good[:10] + [v for v, _ in bad] + [photo] + good[10:]
    produce(kafka, kafka.topics.training_windows, values, keys=[b"same-key"] * len(values))
    settings = trainer_settings(kafka, tmp_path, min_labels=1000)
    for _ in range(2):  # the second run is a restart: it re-reads, but dead-letters nothing again
        service = trainer.TrainerService(settings, TrainerMetrics(CollectorRegistry()))
        assert service.run(StopFlag(), once=True) == []
        assert len(service.states["sensor"].buffer) == 30
        assert len(service.states["image"].buffer) == 1
    letters = drain(kafka, kafka.topics.dlq("training.windows"), expect=len(bad), settle_s=3)
    assert len(letters) == len(bad)
    got = sorted(
        (dl.from_headers(msg.headers(), None, None) for msg in letters),
        key=lambda e: e.source_offset,
    )
    assert [e.error_class for e in got] == [r for _, r in bad]
    assert [
        msg.value()
        for msg in sorted(
            letters, key=lambda mm: dl.from_headers(mm.headers(), None, None).source_offset
        )
    ] == [v for v, _ in bad]
    assert all(
        e.service == "trainer" and e.source_topic == kafka.topics.training_windows for e in got
    )


@pytest.mark.usefixtures("sensor_champion")
def test_a_restart_rebuilds_the_training_set_from_the_last_lineage(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    x, y = labelled_dataset(360, seed=9, world=DRIFTED)
    produce(kafka, kafka.topics.training_windows, labelled_sensor_windows(x[:300], y[:300]))
    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_ARTIFACT_ROOT": (tmp_path / "cli-artifacts").as_uri(),
        "DRIFTLINE_DEVICE": "cpu",
        "DRIFTLINE_MIN_HOLDOUT": "50",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline.services.cli",
            "train",
            "--now",
            "--modality",
            "sensor",
            "--epochs",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "published insulator-sensor v2" in done.stdout
    assert "epoch 2/2" in done.stderr
    mv = registry_snapshot(kafka).versions[SENSOR][2]
    assert sum(r.end_offset - r.start_offset for r in mv.lineage.ranges) == 300

    produce(
        kafka, kafka.topics.training_windows, labelled_sensor_windows(x[300:], y[300:], start=300)
    )
    service = trainer.TrainerService(
        trainer_settings(kafka, tmp_path), TrainerMetrics(CollectorRegistry())
    )
    service.run(StopFlag(), once=True)
    state = service.states["sensor"]
    assert len(state.buffer) == 360, "the last run's training set, and what came after"
    assert state.new_labels == 60, "only what came after the last run counts as new"
    assert state.last_run_ms == mv.created_time_ms


def _publish_record(kafka: KafkaSettings, mv: ModelVersion) -> None:
    KafkaRegistryWriter(kafka).publish(mv)


def test_consumers_refuse_tampered_missing_unsigned_and_forged_versions(
    kafka: KafkaSettings, tiny_sensor_model: TrainedModel, tmp_path: Path
) -> None:
    private, public = generate_keypair()
    other_private, _ = generate_keypair()
    store = FsspecArtifactStore((tmp_path / "signed").as_uri())
    model = tiny_sensor_model

    def version(v: int, key: bytes | None) -> ModelVersion:
        return build_version(
            store=store,
            name=SENSOR,
            version=v,
            modality="sensor",
            exported=model.exported,
            model=model.model,
            classes=list(INSULATOR_CLASSES),
            metrics={"holdout_macro_f1": model.report.holdout_macro_f1},
            lineage=Lineage(source="test"),
            status=STATUS_CHAMPION,
            signing_key=key.decode() if key else None,
        )

    _publish_record(kafka, version(1, private))
    consumer = RunningInference(
        InferenceSettings(
            kafka=kafka,
            max_batch=128,
            max_wait_ms=20,
            registry_timeout_s=30,
            public_key=public.decode(),
        )
    ).start()
    try:
        wait_for(
            lambda: consumer.version() == 1,
            60,
            "signed v1 serving",
            lambda: feed_sensor_windows(kafka, 1),
        )
        tampered = version(2, private)
        with open(tampered.artifact_uri.removeprefix("file://"), "r+b") as f:
            f.seek(200)
            f.write(b"\x00\x01\x02\x03")
        missing = version(3, private)
        os.remove(missing.artifact_uri.removeprefix("file://"))
        for bad in (tampered, missing, version(4, None), version(5, other_private)):
            _publish_record(kafka, bad)
            feed_sensor_windows(kafka, 10 + bad.version)
        _publish_record(kafka, version(6, private))
        wait_for(
            lambda: consumer.version() == 6,
            60,
            "the good v6",
            lambda: feed_sensor_windows(kafka, 20),
        )
        assert consumer.versions() == [1, 6], "v2..v5 never served a single batch"
        assert consumer.rejections("sha256") == 1, "v2: the artifact is not what was signed"
        assert consumer.rejections("fetch") == 1, "v3: the artifact is gone"
        assert consumer.rejections("signature") == 2, "v4 unsigned, v5 signed by another key"
    finally:
        consumer.close()


@pytest.mark.usefixtures("sensor_champion")
def test_rollback_restores_the_previous_version_on_every_consumer(
    kafka: KafkaSettings,
    tiny_sensor_model: TrainedModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from driftline.services.cli import main

    consumers = [
        RunningInference(
            InferenceSettings(
                kafka=kafka, group_id=f"g{i}", max_batch=128, max_wait_ms=20, registry_timeout_s=30
            )
        ).start()
        for i in range(2)
    ]
    flags = ["--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", kafka.topic_prefix]
    try:
        every = lambda v: lambda: all(c.version() == v for c in consumers)  # noqa: E731
        wait_for(every(1), 60, "v1 on both", lambda: feed_sensor_windows(kafka, 1))
        v2 = build_version(
            store=FsspecArtifactStore((tmp_path / "v2").as_uri()),
            name=SENSOR,
            version=2,
            modality="sensor",
            exported=tiny_sensor_model.exported,
            model=tiny_sensor_model.model,
            classes=list(INSULATOR_CLASSES),
            metrics={},
            lineage=Lineage(source="test"),
            status=STATUS_CHAMPION,
        )
        _publish_record(kafka, v2)
        wait_for(every(2), 60, "v2 on both", lambda: feed_sensor_windows(kafka, 2))
        assert main(["models", "rollback", *flags]) == 0
        assert "v2 retired, v1 serves" in capsys.readouterr().out
        wait_for(every(1), 60, "v1 again on both", lambda: feed_sensor_windows(kafka, 3))
        assert all(c.versions() == [1, 2, 1] for c in consumers)
        snap = registry_snapshot(kafka)
        assert snap.champions[SENSOR].version == 1
        assert snap.versions[SENSOR][2].status == STATUS_RETIRED
        assert main(["models", "list", *flags]) == 0
        listed = capsys.readouterr().out
        assert "retired" in listed
        assert main(["models", "show", "2", *flags]) == 0
        assert "sha256" in capsys.readouterr().out
        assert main(["models", "promote", "2", *flags]) == 0
        wait_for(every(2), 60, "v2 promoted again", lambda: feed_sensor_windows(kafka, 4))
    finally:
        for c in consumers:
            c.close()


@pytest.mark.usefixtures("sensor_champion")
def test_a_drift_signal_triggers_a_training(kafka: KafkaSettings, tmp_path: Path) -> None:
    x, y = labelled_dataset(300, seed=12, world=DRIFTED)
    produce(kafka, kafka.topics.training_windows, labelled_sensor_windows(x, y))
    running = RunningTrainer(
        trainer_settings(kafka, tmp_path, min_new_labels=10_000, min_drift_labels=100)
    ).start()
    try:
        time.sleep(3)
        assert running.outcomes == [], "300 new labels are not enough on their own"
        now = int(time.time() * 1000)
        signal = DriftSignal(
            model_name=SENSOR,
            model_version=1,
            statistic="psi",
            score=0.6,
            threshold=0.25,
            drifted=True,
            window_start_ms=now - 60_000,
            window_end_ms=now,
            sample_count=500,
        )
        produce(kafka, kafka.topics.drift_signals, [codec.encode(signal)], keys=[SENSOR.encode()])
        wait_for(lambda: bool(running.outcomes), 120, "a drift-triggered run")
        assert running.outcomes[0].trigger == "drift"
        assert running.outcomes[0].version is not None, running.outcomes[0].summary()
    finally:
        running.close()


def drift_signal(score: float, version: int = 1) -> bytes:
    now = int(time.time() * 1000)
    return codec.encode(
        DriftSignal(
            model_name=SENSOR,
            model_version=version,
            statistic="psi",
            score=score,
            threshold=0.25,
            drifted=True,
            window_start_ms=now - 60_000,
            window_end_ms=now,
            sample_count=500,
        )
    )


@pytest.mark.usefixtures("sensor_champion")
def test_a_drift_signal_the_champion_survived_does_not_retrain_every_window(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    # Inputs that differ from the training set without hurting the model (a fleet whose class
    # mix is not the bootstrap's) keep the drift signal up. Once a drift run has lost its gate,
    # the same signal on the same version must not start a run per window; a stronger one may.
    x, y = labelled_dataset(900, seed=21)
    produce(kafka, kafka.topics.training_windows, labelled_sensor_windows(x[:300], y[:300]))
    running = RunningTrainer(
        trainer_settings(
            kafka, tmp_path, min_new_labels=10_000, min_drift_labels=100, gate_margin=0.9
        )
    ).start()
    key = [SENSOR.encode()]
    try:
        produce(kafka, kafka.topics.drift_signals, [drift_signal(0.6)], keys=key)
        wait_for(lambda: bool(running.outcomes), 120, "a drift-triggered run")
        first = running.outcomes[0]
        assert first.trigger == "drift", first.summary()
        assert first.outcome == "rejected", first.summary()
        produce(
            kafka,
            kafka.topics.training_windows,
            labelled_sensor_windows(x[300:600], y[300:600], start=300),
        )
        produce(kafka, kafka.topics.drift_signals, [drift_signal(0.7)], keys=key)
        time.sleep(8)
        assert len(running.outcomes) == 1, [o.summary() for o in running.outcomes]
        produce(kafka, kafka.topics.drift_signals, [drift_signal(1.2)], keys=key)
        wait_for(lambda: len(running.outcomes) >= 2, 120, "a run on the stronger signal")
        assert running.outcomes[1].trigger == "drift"
    finally:
        running.close()


def served_windows(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    start: int,
    right: bool,
    prefix: str,
) -> list[bytes]:
    """Labelled windows whose served prediction (by v1) was right, or wrong, for every one."""
    out = []
    for i, (samples, label) in enumerate(zip(x, y.tolist(), strict=True)):
        t = T0_MS + (start + i) * 1000
        eid = f"{prefix}-{start + i}"
        served = label if right else (label + 1) % len(INSULATOR_CLASSES)
        out.append(
            codec.encode(
                LabelledWindow(
                    event_id=eid,
                    asset_id=f"insulator-{i % 40:05d}",
                    modality="sensor",
                    event_time_ms=t,
                    label_time_ms=t + 3_600_000,
                    true_class=INSULATOR_CLASSES[label],
                    input_type="SensorWindow",
                    input=sensor_window_bytes(eid, samples, t),
                    predicted_class=INSULATOR_CLASSES[served],
                    confidence=0.9,
                    model_name=SENSOR,
                    model_version=1,
                )
            )
        )
    return out


@pytest.mark.usefixtures("sensor_champion")
def test_an_accuracy_drop_retrains_on_the_new_world_and_gates_on_it(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    # 700 windows of the old world that v1 served right, then the world changes: 300 windows
    # that v1 served wrong. No other trigger can fire (min_new_labels is out of reach).
    x_old, y_old = labelled_dataset(700, seed=21)
    x_new, y_new = labelled_dataset(300, seed=22, world=DRIFTED)
    values = served_windows(x_old, y_old, start=0, right=True, prefix="old")
    values += served_windows(x_new, y_new, start=700, right=False, prefix="new")
    changed_at = T0_MS + 700 * 1000
    produce(kafka, kafka.topics.training_windows, values)
    running = RunningTrainer(
        trainer_settings(
            kafka, tmp_path, min_new_labels=10_000, min_post_change_labels=200, epochs=3
        )
    ).start()
    try:
        wait_for(lambda: bool(running.outcomes), 180, "a run on the change point")
    finally:
        running.close()
    outcome = running.outcomes[0]
    assert outcome.trigger == "change_point", outcome.summary()
    assert outcome.outcome == OUTCOME_PROMOTED, outcome.summary()
    mv = outcome.version
    assert mv is not None
    lineage = mv.lineage
    assert lineage.change_point_ms is not None
    assert abs(lineage.change_point_ms - changed_at) <= 15_000, "found where the world changed"
    assert lineage.holdout_start_ms is not None
    assert lineage.holdout_start_ms >= lineage.change_point_ms, "judged on the new world only"
    assert lineage.train_start_ms is not None
    assert lineage.train_end_ms is not None
    assert lineage.train_start_ms < changed_at <= lineage.train_end_ms
    assert mv.metrics["train_post_change_share"] >= 0.75, "the new world dominates the training"
    assert mv.metrics["champion_holdout_macro_f1"] < mv.metrics["holdout_macro_f1"]
