"""`--log-format json`, as a log pipeline reads it: every stderr line of a real service is JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from driftline.services.runtime.settings import LIBRDKAFKA_LOGGER, KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FIELDS = ("time", "level", "service", "logger", "message")
Record = dict[str, Any]


class StderrRecords:
    """A child's stderr, read as it comes: each line parsed as one JSON record."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.stream = proc.stderr
        self.lines: list[str] = []
        self.ended = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def wait_for(self, wanted: Callable[[Record], bool], what: str, timeout_s: float) -> Record:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while True:
                for line in self.lines:
                    record = _parsed(line)
                    if record is not None and wanted(record):
                        return record
                left = deadline - time.monotonic()
                if left <= 0 or self.ended:
                    seen = "".join(self.lines)
                    raise AssertionError(f"no {what}; stderr:\n{seen}")
                self.changed.wait(left)

    def records(self) -> list[Record]:
        """Every line, each checked to be one JSON object with the stable fields."""
        self.thread.join(timeout=30)
        self.stream.close()
        return [_checked(line) for line in self.lines]


def _parsed(line: str) -> Record | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _checked(line: str) -> Record:
    record = _parsed(line)
    assert record is not None, f"not a JSON object: {line!r}"
    assert all(isinstance(record.get(f), str) for f in FIELDS), record
    when = datetime.fromisoformat(record["time"])
    assert when.utcoffset() == timedelta(0), record["time"]
    return record


def _env(kafka: KafkaSettings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_LOG")}
    return {
        **env,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLINE_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        **extra,
    }


@pytest.mark.usefixtures("sensor_champion")
def test_infer_logs_only_json_lines_swap_rebalance_and_librdkafka_included(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    env = _env(
        kafka,
        DRIFTLINE_LOG_FORMAT="json",
        # librdkafka's own broker-connection lines, forwarded through Python logging.
        DRIFTLINE_KAFKA__CLIENT='{"debug": "broker"}',
        DRIFTLINE_INSTANCE_DIR=str(tmp_path / "instances"),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftline.services.cli", "-v", "infer", "--exactly-once"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = StderrRecords(proc)
    try:
        instance = stderr.wait_for(
            lambda r: r["message"].startswith("exactly-once as instance"), "exactly-once", 60
        )
        swap = stderr.wait_for(lambda r: "model_version" in r, "model swap record", 60)
        assigned = stderr.wait_for(lambda r: "partitions" in r, "assignment record", 60)
        rdkafka = stderr.wait_for(lambda r: r["logger"] == LIBRDKAFKA_LOGGER, "librdkafka", 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    records = stderr.records()
    assert {r["service"] for r in records} == {"inference"}
    assert instance["level"] == "INFO"
    assert instance["logger"] == "driftline.services.inference.service"
    assert swap["message"].startswith("now serving insulator-sensor v1")
    assert (swap["model"], swap["model_version"], swap["previous_version"]) == (
        "insulator-sensor",
        1,
        None,
    )
    assert assigned["topics"] == [kafka.topics.sensor_windows]
    assert assigned["partitions"]
    assert assigned["partitions"] == sorted(assigned["partitions"])
    assert rdkafka["facility"]
    assert rdkafka["client"].startswith("rdkafka#")


def test_a_failing_service_command_says_so_in_json() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "driftline.services.cli",
            "alerts",
            "--log-format",
            "json",
            "--bootstrap-servers",
            "127.0.0.1:1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = StderrRecords(proc)
    assert proc.wait(timeout=60) == 1
    records = stderr.records()
    assert records, "the failure should be logged"
    last = records[-1]
    assert (last["level"], last["service"], last["command"]) == ("ERROR", "alerts", "alerts")
    assert "driftline stack up" in last["message"]


def test_train_now_with_nothing_to_train_logs_and_reports_in_json(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    env = _env(kafka, DRIFTLINE_ARTIFACT_ROOT=(tmp_path / "artifacts").as_uri())
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftline.services.cli", "train", "--now", "--log-format", "json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = StderrRecords(proc)
    assert proc.wait(timeout=120) == 1
    records = stderr.records()
    assert {r["service"] for r in records} == {"trainer"}
    failures = [r for r in records if r.get("command") == "train"]
    assert [r["level"] for r in failures] == ["ERROR"] * len(failures)
    assert any("not trained" in r["message"] for r in failures)
    assert failures[-1]["message"].startswith("nothing was trained.")
