"""docker-compose.yml stays runnable: structure, healthchecks, profiles, and real CLI commands."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def test_the_system_is_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "redis", "topics-init", "trainer-bootstrap", "inference-sensor"} <= set(
        services
    )
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["kafka"]["environment"]["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert services["simulator"]["profiles"] == ["demo"]


def test_dependencies_wait_for_health_or_completion(compose: dict[str, Any]) -> None:
    services = compose["services"]
    allowed = {"service_healthy", "service_completed_successfully", "service_started"}
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond["condition"] in allowed
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} is awaited healthy but has no check"
    long_running = [n for n, s in services.items() if s.get("restart") != "no"]
    for name in long_running:
        if "profiles" not in services[name]:
            assert "healthcheck" in services[name], f"{name} runs on without a healthcheck"


def test_driftline_commands_parse_with_the_real_cli(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for name, svc in compose["services"].items():
        if str(svc.get("image", "")).startswith("driftline:"):
            parser.parse_args(svc["command"])  # exits (fails the test) on an unknown flag
            assert svc["environment"]["DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092", name


def test_no_default_passwords(compose: dict[str, Any]) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert "${REDIS_PASSWORD:?" in text, "the Redis password must come from the environment"
    assert "requirepass" in " ".join(compose["services"]["redis"]["command"])


def test_dockerfile_targets_keep_torch_out_of_the_services_image() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "AS services" in text
    assert "AS trainer" in text
    services_stage = text.split("AS services", 1)[1].split("FROM", 1)[0]
    assert "trainer" not in services_stage.split("pip install", 1)[1].split("\n", 1)[0]


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose client on this machine")
    result = subprocess.run(
        [*cli, "-f", str(REPO / "docker-compose.yml"), "--profile", "demo", "config", "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, "REDIS_PASSWORD": "only-for-config-check"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
