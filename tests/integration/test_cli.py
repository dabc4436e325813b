"""The driftline command, as a user runs it: topics, bootstrap, infer, simulate, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


UNREACHABLE = "127.0.0.1:1"
CLEAR_WITHIN_S = 30.0


def _assert_one_clear_error(
    result: subprocess.CompletedProcess[str], code: int, phrase: str, elapsed: float
) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert phrase in result.stderr, result.stderr
    assert elapsed < CLEAR_WITHIN_S, f"took {elapsed:.1f}s to say so"


@pytest.mark.parametrize(
    ("args", "extra_env", "code", "phrase"),
    [
        pytest.param(
            ["simulate", "sensors", "--count", "-5"], {}, 2, "--count: must be >= 1", id="count"
        ),
        pytest.param(["simulate", "sensors", "--rate", "-1"], {}, 2, "--rate: must be", id="rate"),
        pytest.param(
            ["simulate", "sensors"],
            {"DRIFTLINE_COUNT": "-3"},
            2,
            "driftline simulate: DRIFTLINE_COUNT must be >= 1 (got '-3')",
            id="count-from-env",
        ),
        pytest.param(
            ["topics", "create", "--partitions", "0"],
            {},
            2,
            "--partitions: must be >= 1",
            id="partitions",
        ),
        pytest.param(
            ["features", "get", "x", "--redis-url", "notaurl"], {}, 2, "redis://", id="redis-url"
        ),
        pytest.param(
            ["features", "get", "x"],
            {"DRIFTLINE_REDIS_URL": "notaurl"},
            2,
            "DRIFTLINE_REDIS_URL must be a redis://",
            id="redis-url-from-env",
        ),
        pytest.param(
            ["features", "get", "x", "--redis-url", "redis://127.0.0.1:1/0"],
            {},
            1,
            "cannot read Redis",
            id="redis-unreachable",
        ),
        pytest.param(
            ["alerts", "--webhook-url", "notaurl"], {}, 2, "http(s)://host", id="webhook-url"
        ),
        pytest.param(
            ["stack", "up", "--data-dir", "/proc/x"], {}, 1, "cannot use /proc/x", id="data-dir"
        ),
        pytest.param(
            ["models", "show", "insulator-sensor", "999"],
            {},
            2,
            "`insulator-sensor/v999`",
            id="models-show-two-words",
        ),
        pytest.param(["models", "list"], {}, 1, "is Kafka running", id="models-no-kafka"),
        pytest.param(
            ["infer", "--modality", "sensor"], {}, 1, "is Kafka running", id="infer-no-kafka"
        ),
    ],
)
def test_typos_and_outages_are_one_clear_error(
    args: list[str], extra_env: dict[str, str], code: int, phrase: str
) -> None:
    env = {**os.environ, "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": UNREACHABLE, **extra_env}
    started = time.monotonic()
    result = driftline(*args, env=env)
    _assert_one_clear_error(result, code, phrase, time.monotonic() - started)


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        pytest.param(
            ["train", "--now", "--modality", "sensor"],
            "nothing was trained",
            id="train-now-without-labels",
        ),
        pytest.param(
            ["dlq", "inspect", "nosuchtopic"],
            "'nosuchtopic' is not a driftline topic",
            id="dlq-no-topic",
        ),
        pytest.param(
            ["models", "show", "999", "--model", "insulator-sensor"],
            "no version '999' of insulator-sensor",
            id="models-show-missing",
        ),
        pytest.param(
            ["models", "promote", "insulator-sensor/v999"],
            "no version 'insulator-sensor/v999'",
            id="models-promote-missing",
        ),
    ],
)
def test_nothing_to_do_is_said_and_not_a_success(
    kafka: KafkaSettings, tmp_path: Path, args: list[str], phrase: str
) -> None:
    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "DRIFTLINE_ARTIFACT_ROOT": (tmp_path / "artifacts").as_uri(),
        "DRIFTLINE_DEVICE": "cpu",
    }
    started = time.monotonic()
    result = driftline(*args, env=env)
    _assert_one_clear_error(result, 1, phrase, time.monotonic() - started)
