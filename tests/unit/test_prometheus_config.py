"""The Prometheus config and alert rules: promtool accepts them, and the rules cover the issue."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftline.services.runtime import metrics as m

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = sorted((PROMETHEUS / "rules").glob("*.yml"))
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "check", *args], capture_output=True, text=True, check=False, timeout=60
    )


def _rules() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += group["rules"]
    return out


@needs_promtool
@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-local.yml"])
def test_promtool_accepts_the_config_and_its_rules(name: str) -> None:
    result = _promtool("config", str(PROMETHEUS / name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULES)} rule files found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_kubernetes_config(tmp_path: Path) -> None:
    config = PROMETHEUS / "prometheus-k8s.yml"
    result = _promtool("config", str(config))
    out = result.stdout + result.stderr
    if result.returncode != 0 and "field kubernetes_sd_configs not found" in out:
        # Debian builds Prometheus without Kubernetes discovery: check everything else (the
        # relabelling included) with the discovery swapped for a static target.
        data = yaml.safe_load(config.read_text())
        for job in data["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs")
            job["static_configs"] = [{"targets": ["pod:9108"]}]
        (tmp_path / "rules").symlink_to(PROMETHEUS / "rules")
        copy = tmp_path / "prometheus-k8s.yml"
        copy.write_text(yaml.safe_dump(data))
        result = _promtool("config", str(copy))
        out = result.stdout + result.stderr
    assert result.returncode == 0, out


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = _promtool("rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_duration_a_severity_and_a_description() -> None:
    rules = _rules()
    assert rules
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert len(rule["annotations"]["description"]) > 40, rule["alert"]


def test_the_rules_cover_what_ops_must_hear_about() -> None:
    exprs = {r["alert"]: r["expr"] for r in _rules()}

    def watching(metric: str) -> list[str]:
        return [name for name, expr in exprs.items() if metric in expr]

    assert watching(m.CONSUMER_LAG), "consumer lag high"
    assert watching(m.DEAD_LETTERS), "dead-letter rate"
    assert any('outcome!="ok"' in exprs[n] for n in watching(m.MODEL_SWAPS)), "load failures"
    assert watching(m.DRIFT_SCORE), "drift score high"
    assert any("< 0.7" in exprs[n] for n in watching(m.LIVE_ACCURACY)), "live accuracy low"
    assert watching(m.EVENTS_PRODUCED), "no results produced"
    assert set(watching(m.WEBHOOK_DELIVERIES)) & set(watching(m.ALERTS_DEAD_LETTERED)), (
        "webhook failing: failed or skipped deliveries, dead-lettered alerts"
    )


def test_the_compose_and_kubernetes_configs_label_targets_alike() -> None:
    compose = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    k8s = yaml.safe_load((PROMETHEUS / "prometheus-k8s.yml").read_text())
    for config in (compose, k8s):
        assert config["rule_files"] == ["rules/*.yml"]
    inference = [j for j in compose["scrape_configs"] if j["job_name"].startswith("inference-")]
    assert {j["job_name"] for j in inference} == {"inference-sensor", "inference-image"}
    for job in inference:
        assert job["honor_labels"] is True
        labels = {r["target_label"]: r["replacement"] for r in job["relabel_configs"]}
        assert labels == {"service": "inference", "modality": job["job_name"].split("-")[1]}
    k8s_targets = {r.get("target_label") for r in k8s["scrape_configs"][0]["relabel_configs"]}
    assert {"job", "service", "modality", "instance"} <= k8s_targets


def test_the_local_config_has_the_compose_jobs_and_labels() -> None:
    compose = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    local = yaml.safe_load((PROMETHEUS / "prometheus-local.yml").read_text())["scrape_configs"]
    assert [j["job_name"] for j in local] == [j["job_name"] for j in compose]
    for mine, theirs in zip(local, compose, strict=True):
        for key in ("honor_labels", "relabel_configs"):
            assert mine.get(key) == theirs.get(key), (mine["job_name"], key)
    ports = [
        t.rsplit(":", 1)[1] for j in local for sc in j["static_configs"] for t in sc["targets"]
    ]
    assert len(set(ports)) == len(ports), "one loopback port per service"
