"""docker-compose.yml stays runnable: structure, healthchecks, profiles, and real CLI commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftline.services.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


SYSTEM = {
    "kafka",
    "redis",
    "prometheus",
    "grafana",
    "topics-init",
    "trainer-bootstrap",
    "trainer",
    "inference-sensor",
    "inference-image",
    "features",
    "alerts",
    "simulator",
}
# The password variables compose must refuse to run without (no defaults anywhere).
PASSWORD_VARIABLES = ("REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD")


def test_the_system_is_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SYSTEM
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["kafka"]["environment"]["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert services["simulator"]["profiles"] == ["demo"]
    assert [n for n, s in services.items() if "profiles" in s] == ["simulator"]


def _command(svc: dict[str, Any]) -> list[str]:
    return [str(part) for part in svc["command"]]


def _flag(svc: dict[str, Any], flag: str) -> str | None:
    cmd = _command(svc)
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def test_inference_runs_for_both_modalities_and_scales(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for modality in ("sensor", "image"):
        svc = services[f"inference-{modality}"]
        assert _command(svc)[0] == "infer"
        assert _flag(svc, "--modality") == modality
        assert _flag(svc, "--metrics-port") is not None
        # `--scale` needs replicas without a fixed name or host port.
        assert "container_name" not in svc
        assert "ports" not in svc
        assert svc["image"] == "driftline:services"


def test_every_long_running_driftline_service_serves_metrics(compose: dict[str, Any]) -> None:
    for name in ("inference-sensor", "inference-image", "features", "alerts", "trainer"):
        svc = compose["services"][name]
        port = _flag(svc, "--metrics-port")
        assert port is not None, name
        assert f":{port}/healthz" in " ".join(svc["healthcheck"]["test"]), name


def test_the_trainer_reserves_a_gpu_and_the_services_image_has_no_torch(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    trainer = services["trainer"]
    assert trainer["image"] == "driftline:trainer"
    assert _command(trainer)[0] == "train"
    (device,) = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["count"] == 1
    assert device["capabilities"] == ["gpu"]
    assert _command(services["trainer-bootstrap"]) == ["train", "--bootstrap", "--if-missing"]
    for name in ("inference-sensor", "inference-image", "features", "alerts", "simulator"):
        assert services[name]["image"] == "driftline:services", name


def test_redis_keeps_an_append_only_file(compose: dict[str, Any]) -> None:
    cmd = _command(compose["services"]["redis"])
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in compose["services"]["redis"]["volumes"]


def test_prometheus_and_grafana_get_the_deploy_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    grafana = services["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert (
        "./deploy/grafana/dashboards:/var/lib/grafana/dashboards/driftline:ro"
        in (grafana["volumes"])
    )
    assert grafana["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"
    for name in ("prometheus", "grafana"):
        for mapping in services[name].get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name} is published on loopback only"


def test_prometheus_scrapes_every_service_on_its_metrics_port(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = compose["services"]
    for name in ("inference-sensor", "inference-image", "features", "alerts", "trainer"):
        job = jobs[name]
        port = _flag(services[name], "--metrics-port")
        targets = [f"{sd['names'][0]}:{sd['port']}" for sd in job.get("dns_sd_configs", [])] + [
            t for sc in job.get("static_configs", []) for t in sc["targets"]
        ]
        assert targets == [f"{name}:{port}"], name


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
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    for var in PASSWORD_VARIABLES:
        assert f"${{{var}:-" not in text, f"{var} must have no default"
    # A secret in an environment value is an interpolation that fails when unset.
    required = re.compile(r"\$\{[A-Z_]+:\?[^}]*\}")
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            text = str(value)
            if any(word in key for word in ("PASSWORD", "SECRET", "TOKEN")):
                assert required.fullmatch(text), f"{name}: {key} must be ${{VAR:?...}}"
            if "://" in text and "@" in text:  # credentials inside a URL
                userinfo = text.split("://", 1)[1].rsplit("@", 1)[0]
                assert required.search(userinfo), f"{name}: {key} holds a literal password"


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
        env={**os.environ, **dict.fromkeys(PASSWORD_VARIABLES, "only-for-config-check")},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for missing in PASSWORD_VARIABLES:
        env = {k: v for k, v in os.environ.items() if k not in PASSWORD_VARIABLES}
        env.update({k: "set" for k in PASSWORD_VARIABLES if k != missing})
        refused = subprocess.run(
            [*cli, "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            cwd=REPO,
        )
        assert refused.returncode != 0, f"compose ran without {missing}"
        assert missing in refused.stderr
