"""The Grafana dashboards, statically: structure, variables, and every query over real metrics.

Every metric a panel or an alert rule names must be one the services export (the constants and
collectors of services/runtime/metrics.py), with the right suffix for its type, and every label
a selector filters on must exist on that metric or be a target label Prometheus adds. With
promtool installed, every query (variables substituted) must also parse as PromQL.
The integration test tests/integration/test_dashboards.py runs the same queries on live data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from driftline.services.alerts.metrics import AlertsMetrics
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.inference.metrics import InferenceMetrics
from driftline.services.runtime import metrics as m
from driftline.trainer.metrics import TrainerMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
RULES = REPO / "deploy" / "prometheus" / "rules"
DATASOURCE_UID = "driftline-prometheus"
REQUIRED_VARIABLES = {"modality", "model"}
# Labels Prometheus attaches to every series of a target (deploy/prometheus/prometheus.yml).
TARGET_LABELS = {"job", "instance", "service", "modality", "namespace"}
# What the template variables become when a query is evaluated outside Grafana.
SUBSTITUTIONS = {
    "$__rate_interval": "30s",
    "$__range": "5m",
    "$__interval": "15s",
    "$modality": "sensor",
    "$model": "insulator-sensor",
}
_METRIC = re.compile(r"\b(driftline_[a-z0-9_]+|up)\b(\{[^}]*\})?")
_LABEL_IN_SELECTOR = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref}"


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """The query Grafana would send with these variable values (longest names first)."""
    out = expr
    table = {**SUBSTITUTIONS, **(values or {})}
    for name in sorted(table, key=len, reverse=True):
        out = out.replace(name, table[name])
    return out


def panel_queries() -> list[PanelQuery]:
    return [
        PanelQuery(name, panel["title"], target["refId"], target["expr"])
        for name, board in dashboards().items()
        for panel in panels(board)
        for target in panel["targets"]
    ]


def rule_expressions() -> list[tuple[str, str]]:
    out = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("alert") or rule["record"], rule["expr"]))
    return out


def exported_metrics() -> dict[str, tuple[str, set[str]]]:
    """Sample name -> (metric type, label names) of everything the services can export."""
    out: dict[str, tuple[str, set[str]]] = {}
    for cls in (InferenceMetrics, TrainerMetrics, FeaturesMetrics, AlertsMetrics):
        registry = CollectorRegistry()
        cls(registry)
        for collector in list(registry._collector_to_names):
            labels = set(
                getattr(collector, "_labelnames", None) or getattr(collector, "labelnames", ())
            )
            for family in collector.collect():
                suffixes = {
                    "counter": ["_total"],
                    "gauge": [""],
                    "histogram": ["_bucket", "_sum", "_count"],
                }[family.type]
                for suffix in suffixes:
                    extra = {"le"} if suffix == "_bucket" else set()
                    out[family.name + suffix] = (family.type, labels | extra)
    return out


def metric_references(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(sample name, labels its selector filters on) of every metric an expression reads."""
    for match in _METRIC.finditer(expr):
        selector = match.group(2) or ""
        yield match.group(1), set(_LABEL_IN_SELECTOR.findall(selector))


def test_there_are_the_three_dashboards() -> None:
    boards = dashboards()
    assert set(boards) == {"overview.json", "model-quality.json", "retraining.json"}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", ["overview.json", "model-quality.json", "retraining.json"])
def test_dashboard_structure(name: str) -> None:
    board = dashboards()[name]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) >= REQUIRED_VARIABLES
    for var in variables.values():
        assert var["datasource"]["uid"] == DATASOURCE_UID
        assert var["includeAll"]
        assert var["allValue"] == ".*"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels(board):
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel.get("description"), f"{panel['title']} says what it shows"
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].strip()
            assert target["datasource"]["uid"] == DATASOURCE_UID


def test_the_sections_the_issue_asks_for_are_there() -> None:
    titles = {name: {p["title"] for p in panels(b)} for name, b in dashboards().items()}
    exprs = {
        name: " ".join(t["expr"] for p in panels(b) for t in p["targets"])
        for name, b in dashboards().items()
    }
    overview = exprs["overview.json"]
    for metric in (
        m.EVENTS_CONSUMED,
        m.END_TO_END_SECONDS,
        m.CONSUMER_LAG,
        m.BATCH_SIZE,
        m.DEAD_LETTERS,
    ):
        assert metric in overview, metric
    assert "histogram_quantile(0.5" in overview
    assert "histogram_quantile(0.99" in overview
    quality = exprs["model-quality.json"]
    for metric in (m.CONFIDENCE, m.PREDICTIONS, m.LIVE_ACCURACY, m.DRIFT_SCORE):
        assert metric in quality, metric
    assert "by (model, version)" in quality, "confidence is shown per model version"
    retraining = exprs["retraining.json"]
    for metric in (
        m.LABELS_BUFFERED,
        m.TRAININGS,
        m.GATE_DECISIONS,
        m.MODEL_VERSION,
        m.MODEL_SWAP_SECONDS,
    ):
        assert metric in retraining, metric
    assert all(titles.values())


def test_every_query_reads_metrics_the_services_export_with_their_labels() -> None:
    exported = exported_metrics()
    constants = {
        v for k, v in vars(m).items() if k.isupper() and isinstance(v, str) and "driftline_" in v
    }
    queries = [(q.name, q.expr) for q in panel_queries()] + rule_expressions()
    seen: set[str] = set()
    for where, expr in queries:
        for metric, labels in metric_references(expr):
            if metric == "up":
                assert labels <= TARGET_LABELS, (where, labels)
                continue
            assert metric in exported, f"{where}: {metric} is not a metric the services export"
            kind = exported[metric][0]
            base = re.sub(r"_(bucket|sum|count)$", "", metric) if kind == "histogram" else metric
            assert base in constants, f"{where}: {base} is not a constant of runtime/metrics.py"
            known = exported[metric][1] | TARGET_LABELS
            assert labels <= known, f"{where}: {metric} has no label {labels - known}"
            seen.add(metric)
    assert seen, "the dashboards query driftline metrics"


def test_variables_substitute_to_plain_promql() -> None:
    for q in panel_queries():
        assert "$" not in substitute(q.expr), q.name


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (ds,) = sources["datasources"]
    assert ds["uid"] == DATASOURCE_UID
    assert ds["type"] == "prometheus"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "driftline.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/driftline"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_panel_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses a recording rule's expression: one rule per panel query."""
    queries = panel_queries()
    rules = {
        "groups": [
            {
                "name": "panels",
                "rules": [
                    {"record": f"panel:query:{i}", "expr": substitute(q.expr)}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
