"""Kill -9 mid-stream, restart: at-least-once loses nothing; exactly-once repeats nothing too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from driftline.schemas import codec
from driftline.schemas.messages import InferenceResult
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.simulator import sensors
from driftline.services.simulator.settings import SimulatorSettings
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

N = 6000


def _count_visible(
    kafka: KafkaSettings, topic: str, at_least: int, timeout_s: float, *, committed: bool = False
) -> int:
    """Records a fresh reader sees from the start, until `at_least` or the timeout: with
    read_uncommitted (the default) they show the consumer is mid-stream, with `committed`
    that its transactions commit."""
    isolation = "read_committed" if committed else "read_uncommitted"
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"peek-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "isolation.level": isolation,
                "enable.auto.commit": False,
            }
        )
    )
    consumer.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < at_least and time.monotonic() < deadline:
            seen += len([m for m in consumer.consume(500, timeout=0.2) if m.error() is None])
    finally:
        consumer.close()
    return seen


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driftline.services.cli",
                "infer",
                "--modality",
                "sensor",
                "--max-batch",
                "50",
                "--max-wait-ms",
                "5",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
@pytest.mark.usefixtures("sensor_champion")
def test_sigkill_and_restart(kafka: KafkaSettings, tmp_path: Path, exactly_once: bool) -> None:
    report = sensors.run(
        SimulatorSettings(kafka=kafka, count=N, rate=50_000, assets=30, seed=5),
        progress=False,
        keep_truth=True,
    )
    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_EXACTLY_ONCE": "true" if exactly_once else "false",
        "DRIFTLINE_INSTANCE_ID": "instance-a",
        "DRIFTLINE_LOG_LEVEL": "INFO",
    }
    log = tmp_path / "infer.log"
    first = _start(env, log)
    try:
        seen = _count_visible(kafka, kafka.topics.inference_results, 1000, timeout_s=90)
        assert seen >= 1000, f"consumer made no progress before the kill: {log.read_text()[-2000:]}"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL

    second = _start(env, log)
    try:
        records = drain(kafka, kafka.topics.inference_results, expect=N, timeout_s=150)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    assert second.returncode == 0, log.read_text()[-3000:]

    ids = Counter(codec.decode(InferenceResult, m.value()).event_id for m in records)
    sent = {t.event_id for t in report.truth}
    assert set(ids) == sent, f"lost {len(sent - set(ids))} events"
    duplicated = sum(c - 1 for c in ids.values())
    if exactly_once:
        assert duplicated == 0, f"{duplicated} results duplicated under exactly-once"
        assert len(records) == N
    else:
        assert len(records) == N + duplicated


@pytest.mark.usefixtures("sensor_champion")
def test_at_least_once_commits_the_last_batch_soon_after_the_stream_goes_idle(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    from confluent_kafka import TopicPartition

    n = 120
    sensors.run(
        SimulatorSettings(kafka=kafka, count=n, rate=50_000, assets=6, seed=8), progress=False
    )
    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_EXACTLY_ONCE": "false",
        "DRIFTLINE_INSTANCE_ID": "idle",
    }
    log = tmp_path / "infer.log"
    proc = _start(env, log)
    group = InferenceSettings(kafka=kafka, modality="sensor").effective_group_id
    reader = Consumer(kafka.client_config(**{"group.id": group}))
    try:
        drain(kafka, kafka.topics.inference_results, expect=n, timeout_s=90, settle_s=0.5)
        source = kafka.topics.name("sensor.windows")
        parts = [TopicPartition(source, p) for p in range(3)]
        # The stream is idle now: its last batch's offsets must be committed within about a
        # second, without waiting for another batch to arrive.
        deadline = time.monotonic() + 3.0
        committed = 0
        while time.monotonic() < deadline:
            committed = sum(max(tp.offset, 0) for tp in reader.committed(parts, timeout=5))
            if committed == n:
                break
            time.sleep(0.2)
        assert committed == n, f"{n - committed} offsets left uncommitted while idle"
    finally:
        reader.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
