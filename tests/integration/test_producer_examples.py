"""The producer examples (Python Avro and JSON, Node.js JSON) feed a real inference consumer.

Each example runs as its own process against the real broker, as a user would run it; a real
inference consumer scores what it sent, and every event id it sent comes back scored exactly
once (a record the consumer could not read would be dead-lettered instead, and be missing).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.messages import InferenceResult, SensorWindow
from driftline.services.inference import service as inference
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.shutdown import StopFlag
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "producers"
N = 40


@pytest.fixture
def scoring(
    kafka: KafkaSettings,
    sensor_champion: object,  # noqa: ARG001  (published first; marks cannot apply to fixtures)
) -> Iterator[None]:
    """A real sensor inference consumer, in a thread, for the length of the test."""
    settings = InferenceSettings(kafka=kafka, max_batch=64, max_wait_ms=20, registry_timeout_s=30)
    stop = StopFlag()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            inference.run(settings, stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "inference did not stop within 60 s of being asked"
        assert not errors, errors


def _run_example(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{command[:2]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _event_id(value: bytes, content_type: str) -> str:
    """The event id of a sent window, read without the consumers' checks (it may fail them)."""
    if content_type == h.CONTENT_TYPE_JSON:
        return str(json.loads(value)["event_id"])
    return codec.decode(SensorWindow, value, content_type).event_id


def _outcomes(kafka: KafkaSettings, timeout_s: float = 45.0) -> tuple[list[Message], list[Message]]:
    """Results and dead letters, read until they account for N windows and 1 s passes quiet."""
    results_topic, dlq_topic = kafka.topics.inference_results, kafka.topics.dlq("sensor.windows")
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"test-outcomes-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
    )
    consumer.subscribe([results_topic, dlq_topic])
    results: list[Message] = []
    dead: list[Message] = []
    quiet_since = time.monotonic()
    deadline = quiet_since + timeout_s
    try:
        while time.monotonic() < deadline:
            got = [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
            for m in got:
                (results if m.topic() == results_topic else dead).append(m)
            if got:
                quiet_since = time.monotonic()
            elif len(results) + len(dead) >= N and time.monotonic() - quiet_since >= 1.0:
                break
    finally:
        consumer.close()
    return results, dead


def _assert_all_scored(kafka: KafkaSettings, content_type: str) -> None:
    """Every window on the input topic was sent as `content_type` and was scored once."""
    sent = drain(kafka, kafka.topics.sensor_windows, expect=N, timeout_s=30, settle_s=1.0)
    types = Counter(codec.content_type_of(m.headers()) for m in sent)
    assert types == {content_type: N}, types
    sent_ids = {_event_id(m.value(), content_type) for m in sent}
    assert len(sent_ids) == N
    results, dead = _outcomes(kafka)
    scored = Counter(codec.decode(InferenceResult, m.value()).event_id for m in results)
    if set(scored) != sent_ids:
        reasons = Counter(dict(m.headers() or []).get(h.DLQ_ERROR_MESSAGE) for m in dead)
        pytest.fail(f"{len(sent_ids - set(scored))} of {N} not scored; dead letters: {reasons}")
    assert set(scored.values()) == {1}, "an event was scored more than once"


@pytest.mark.usefixtures("scoring")
@pytest.mark.parametrize("fmt", ["avro", "json"])
def test_python_example_windows_are_scored(kafka: KafkaSettings, fmt: str) -> None:
    out = _run_example(
        [
            sys.executable,
            str(EXAMPLES / "python" / "produce.py"),
            "--bootstrap-servers",
            kafka.bootstrap_servers,
            "--topic",
            kafka.topics.sensor_windows,
            "--count",
            str(N),
            "--format",
            fmt,
        ],
        cwd=ROOT,
    )
    assert f"sent {N} {fmt} sensor windows" in out
    _assert_all_scored(kafka, f"application/{fmt}")


@pytest.mark.usefixtures("scoring")
def test_node_example_windows_are_scored(kafka: KafkaSettings) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed: the Node.js producer example needs Node 20+")
    folder = EXAMPLES / "node"
    if not (folder / "node_modules" / "kafkajs").is_dir():  # scripts/setup installs it
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=folder, check=True, timeout=120)
    out = _run_example(
        [
            node,
            "produce.js",
            "--bootstrap-servers",
            kafka.bootstrap_servers,
            "--topic",
            kafka.topics.sensor_windows,
            "--count",
            str(N),
        ],
        cwd=folder,
    )
    assert f"sent {N} json sensor windows" in out
    _assert_all_scored(kafka, "application/json")
