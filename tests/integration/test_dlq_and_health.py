"""Dead letters can be read and replayed once; /metrics, /healthz and /readyz tell the truth."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.services.inference import service
from driftline.services.inference.settings import InferenceSettings
from driftline.services.localstack import free_port
from driftline.services.runtime import deadletters
from driftline.services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.shutdown import StopFlag
from driftline.services.simulator import sensors
from driftline.services.simulator.settings import SimulatorSettings
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _send(kafka: KafkaSettings, values: list[bytes | None]) -> None:
    prod = producer(kafka)
    tracker = DeliveryTracker()
    for i, value in enumerate(values):
        prod.produce(
            kafka.topics.sensor_windows,
            key=f"asset-{i}",
            value=value,
            headers=[(h.CONTENT_TYPE, b"application/avro"), ("trace-id", f"t{i}".encode())],
            on_delivery=tracker,
        )
    flush_or_raise(prod, tracker)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.usefixtures("sensor_champion")
def test_dlq_inspect_replay_and_health_endpoints(
    kafka: KafkaSettings,
) -> None:
    port = free_port()
    stop = StopFlag()
    reg = CollectorRegistry()

    def serve() -> None:
        service.run(
            InferenceSettings(kafka=kafka, metrics_port=port, statistics_interval_ms=500),
            stop,
            metrics_registry=reg,
        )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        _send(kafka, [b"\x02\x99broken", None, b"\x02\x98broken"])
        letters = drain(kafka, kafka.topics.dlq("sensor.windows"), expect=3)
        assert len(letters) == 3

        found = sorted(
            deadletters.inspect(kafka, "sensor.windows"), key=lambda x: x.envelope.key or b""
        )
        assert [x.envelope.error_class for x in found] == [
            dl.UNDECODABLE,
            dl.EMPTY_VALUE,
            dl.UNDECODABLE,
        ]
        assert found[0].envelope.key == b"asset-0"
        assert ("trace-id", b"t0") in found[0].headers, "original headers are kept"

        report = deadletters.replay(
            kafka, "sensor.windows", accept=lambda x: x.envelope.error_class == dl.UNDECODABLE
        )
        assert (report.replayed, report.skipped) == (2, 1)
        # The replayed records are still broken, so they come back to the DLQ as new letters,
        # with their original headers and a fresh envelope.
        letters = drain(kafka, kafka.topics.dlq("sensor.windows"), expect=5)
        assert len(letters) == 5
        again = deadletters.replay(kafka, "sensor.windows", dry_run=True)
        assert again.replayed == 2, "progress is committed: only the two new letters remain"
        everything = deadletters.replay(kafka, "sensor.windows", dry_run=True, from_start=True)
        assert everything.replayed == 5
        newest = sorted(deadletters.inspect(kafka, "sensor.windows"), key=lambda x: x.dlq_offset)
        assert [k for k, _ in newest[-1].headers].count("driftline-error-class") == 1

        sensors.run(SimulatorSettings(kafka=kafka, count=300, rate=5000), progress=False)
        drain(kafka, kafka.topics.inference_results, expect=300)
        status, _ = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        status, _ = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        for series in (
            "driftline_events_consumed_total",
            "driftline_events_produced_total",
            'driftline_dead_letters_total{reason="undecodable"',
            "driftline_batch_size_bucket",
            "driftline_inference_seconds_bucket",
            "driftline_end_to_end_latency_seconds_bucket",
            'driftline_prediction_confidence_bucket{le="0.5",model="insulator-sensor",version="1"}',
            "driftline_predictions_total",
            'driftline_model_version{model="insulator-sensor"} 1.0',
            'driftline_model_swaps_total{model="insulator-sensor",outcome="ok",reason=""} 1.0',
            "driftline_model_swap_seconds_bucket",
            "driftline_consumer_lag{",
        ):
            assert series in text, f"{series} missing from /metrics"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.usefixtures("sensor_champion")
def test_dlq_command_prints_readably(
    kafka: KafkaSettings,
) -> None:
    stop = StopFlag()
    thread = threading.Thread(
        target=service.run, args=(InferenceSettings(kafka=kafka), stop), daemon=True
    )
    thread.start()
    try:
        _send(kafka, [b"\x02\x99broken"])
        drain(kafka, kafka.topics.dlq("sensor.windows"), expect=1)
    finally:
        stop.set()
        thread.join(timeout=30)
    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
    }
    out = subprocess.run(
        [sys.executable, "-m", "driftline.services.cli", "dlq", "inspect", "sensor.windows"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "1 dead letters on" in out
    assert "undecodable" in out
    assert "key asset-0" in out
    dry = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline.services.cli",
            "dlq",
            "replay",
            "sensor.windows",
            "--dry-run",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "would replay 1" in dry
