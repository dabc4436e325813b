"""The alerting consumer and a real Prometheus Alertmanager: alerts fire, stay, and resolve."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from driftline.services.alerts.settings import AlertsSettings
from driftline.services.localstack import free_port
from driftline.services.runtime.settings import KafkaSettings
from tests.integration.test_alerts import T0_MS, publish, result, run_in_thread, sample, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
CONFIG = 'route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n'
T = TypeVar("T")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager on a free loopback port, clustering off; yields its base URL."""
    if BINARY is None:
        pytest.skip("prometheus-alertmanager is not installed (scripts/setup installs it as root)")
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            BINARY,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready(url):
            assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
            assert time.monotonic() < deadline, "alertmanager did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def value_of(get: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while (got := get()) is None:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return got


def epoch_s(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def test_an_unhealthy_asset_fires_in_alertmanager_and_resolves_when_healthy_again(
    kafka: KafkaSettings, alertmanager: str
) -> None:
    publish(
        kafka,
        [result("ins-7", "X", t) for t in range(3)] + [result("calm", "H", t) for t in range(3)],
    )
    settings = AlertsSettings(
        kafka=kafka,
        group_id=f"alerts-{uuid.uuid4().hex[:6]}",
        k=3,
        n=5,
        max_wait_ms=20,
        alertmanager_url=alertmanager,
        alertmanager_resend_s=4,
        alertmanager_generator_url="http://grafana.example/d/driftline",
    )
    registry = CollectorRegistry()
    _stop, finish = run_in_thread(settings, registry)

    def alerts_of(asset: str) -> list[dict[str, Any]] | None:
        found = [
            a for a in get_json(f"{alertmanager}/api/v2/alerts") if a["labels"]["asset"] == asset
        ]
        return found or None

    try:
        firing = value_of(lambda: alerts_of("ins-7"), 45, "the alert in Alertmanager")
        assert len(firing) == 1
        alert = firing[0]
        assert alert["labels"] == {
            "alertname": "DriftlineAssetFault",
            "asset": "ins-7",
            "severity": "critical",
            "modality": "sensor",
            "model_version": "2",
        }
        notes = alert["annotations"]
        assert notes["evidence"] == "ins-7@0, ins-7@1, ins-7@2"
        assert notes["reason"] == "3 of the last 3 windows faulty (flashover_damaged: 3)"
        assert notes["fault"] == "flashover_damaged"
        assert alert["generatorURL"] == "http://grafana.example/d/driftline"
        assert alert["status"]["state"] in ("active", "unprocessed")
        assert epoch_s(alert["startsAt"]) == (T0_MS + 2000) / 1000
        assert alerts_of("calm") is None

        # While the asset stays faulty the alert is re-sent: its endsAt keeps moving on.
        first_end = epoch_s(alert["endsAt"])
        value_of(
            lambda: next(
                (a for a in alerts_of("ins-7") or [] if epoch_s(a["endsAt"]) > first_end), None
            ),
            30,
            "a re-send to move endsAt on",
        )

        # Healthy again: 5 healthy windows of 5, and Alertmanager sees the alert resolved,
        # well before it would have expired on its own.
        publish(kafka, [result("ins-7", "H", t) for t in range(3, 8)])
        last_end = 0.0

        def resolved() -> bool | None:
            nonlocal last_end
            current = alerts_of("ins-7")
            if current is None:
                return True
            last_end = max(epoch_s(a["endsAt"]) for a in current)
            return None

        value_of(resolved, 30, "the alert to resolve")
        assert time.time() < last_end, "the alert expired instead of being resolved"
        wait_for(lambda: sample(registry, "driftline_alerts_resolved_total") >= 1, 30, "the metric")
        assert (
            sample(
                registry, "driftline_alertmanager_posts_total", purpose="batch", outcome="delivered"
            )
            >= 2
        )
        assert (
            sample(registry, "driftline_alerts_dead_lettered_total", reason="alertmanager_failed")
            == 0
        )
    finally:
        finish()


def test_the_example_configuration_is_valid() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool (Debian's prometheus-alertmanager) is not installed")
    example = Path(__file__).parents[2] / "deploy" / "alertmanager" / "alertmanager.yml"
    done = subprocess.run(
        [amtool, "check-config", str(example)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
