"""The driftline command, as a user runs it: topics, bootstrap, infer, simulate, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from driftline.schemas import codec
from driftline.schemas.messages import InferenceResult
from driftline.services.runtime.settings import KafkaSettings
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def driftline(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.services.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_bootstrap_then_score_then_stop_cleanly(kafka: KafkaSettings, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_ARTIFACT_ROOT": (tmp_path / "artifacts").as_uri(),
    }
    created = driftline("topics", "create", env=env)
    assert created.returncode == 0, created.stderr
    assert "exists   " + kafka.topics.models_registry in created.stdout

    trained = driftline(
        "train",
        "--bootstrap",
        "--modality",
        "sensor",
        "--windows",
        "1200",
        "--epochs",
        "2",
        env=env,
    )
    assert trained.returncode == 0, trained.stderr
    assert "published insulator-sensor v1 (champion)" in trained.stdout
    assert "epoch 2/2" in trained.stderr
    again = driftline("train", "--bootstrap", "--if-missing", "--modality", "sensor", env=env)
    assert "already serves" in again.stdout

    listed = driftline("models", "list", env=env)
    assert "insulator-sensor" in listed.stdout
    assert "yes" in listed.stdout

    infer = subprocess.Popen(
        [sys.executable, "-m", "driftline.services.cli", "infer", "--modality", "sensor"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sim = driftline("simulate", "sensors", "--count", "600", "--rate", "2000", env=env)
        assert sim.returncode == 0, sim.stderr
        assert "600 windows, 0 photos and 0 labels sent" in sim.stderr
        results = drain(kafka, kafka.topics.inference_results, expect=600)
        ids = [codec.decode(InferenceResult, m.value()).event_id for m in results]
        assert len(ids) == 600
        assert len(set(ids)) == 600
    finally:
        infer.send_signal(signal.SIGTERM)
        _, err = infer.communicate(timeout=60)
    assert infer.returncode == 0, f"SIGTERM should drain and exit 0, got {infer.returncode}: {err}"


def test_help_teaches_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "driftline.services.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in ("stack", "topics", "simulate", "infer", "train", "models", "demo"):
        assert command in out
    assert "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS" in out


def test_unreachable_kafka_is_a_clear_error_not_a_traceback() -> None:
    env = {**os.environ, "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = driftline("topics", "create", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "driftline stack up" in result.stderr
