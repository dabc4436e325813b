"""Alertmanager API v2 payloads, the batch POST and its dead letters, and the re-send timer."""

from __future__ import annotations

import dataclasses
import json
import random
import time

import pytest
from prometheus_client import CollectorRegistry

from driftline.schemas import deadletter as dl
from driftline.schemas.messages import Alert
from driftline.services.alerts import service
from driftline.services.alerts.alertmanager import (
    AlertmanagerPath,
    AlertmanagerSender,
    api_url,
    rfc3339,
)
from driftline.services.alerts.handler import AlertsHandler
from driftline.services.alerts.metrics import AlertsMetrics
from driftline.services.alerts.settings import AlertsSettings
from driftline.services.cli import build_parser, main
from driftline.services.commands.alerts import FLAGS
from driftline.services.commands.args import settings_from
from driftline.services.core.alerting import RaisedAlert
from driftline.services.runtime.settings import KafkaSettings
from tests.unit.test_alert_deadletters import SlowEndpoint
from tests.unit.test_alerting import ScriptedEndpoint, obs

NOW_MS = 1_750_000_000_000


def raised(
    asset: str = "ins-1", severity: str = "critical", t_ms: int = NOW_MS - 5000
) -> RaisedAlert:
    return RaisedAlert(
        alert_id=f"id-{asset}-{severity}",
        asset_id=asset,
        severity=severity,
        rule="k_of_n",
        reason="3 of the last 5 windows faulty (flashover_damaged: 3)",
        predicted_class="flashover_damaged",
        evidence_event_ids=("e1", "e2", "e3"),
        model_name="insulator-sensor",
        model_version=4,
        raised_time_ms=t_ms,
        modality="sensor",
    )


def record(r: RaisedAlert) -> Alert:
    return Alert(
        alert_id=r.alert_id,
        asset_id=r.asset_id,
        severity=r.severity,
        reason=r.reason,
        predicted_class=r.predicted_class,
        evidence_event_ids=list(r.evidence_event_ids),
        model_name=r.model_name,
        model_version=r.model_version,
        raised_time_ms=r.raised_time_ms,
    )


def path(endpoint: ScriptedEndpoint, budget_s: float = 60.0) -> AlertmanagerPath:
    sender = AlertmanagerSender(
        api_url("http://user:pw@am.example:9093/"),
        retries=2,
        backoff_base_s=0.001,
        backoff_max_s=0.002,
        post=endpoint,
        sleep=lambda _s: None,
        rng=random.Random(0),
    )
    return AlertmanagerPath(
        sender,
        resend_s=60.0,
        budget_s=budget_s,
        generator_url="https://grafana.example/d/x",
        wall_ms=lambda: NOW_MS,
    )


def posted(endpoint: ScriptedEndpoint, call: int = -1) -> list[dict[str, object]]:
    body: list[dict[str, object]] = json.loads(endpoint.calls[call][1])
    return body


def test_api_url_appends_the_v2_path_once_and_keeps_a_route_prefix() -> None:
    assert api_url("http://am:9093") == "http://am:9093/api/v2/alerts"
    assert api_url("http://am:9093/") == "http://am:9093/api/v2/alerts"
    assert api_url("http://h/alertmanager/") == "http://h/alertmanager/api/v2/alerts"
    assert api_url("http://am:9093/api/v2/alerts") == "http://am:9093/api/v2/alerts"


def test_a_new_alert_is_posted_firing_with_its_labels_and_annotations() -> None:
    endpoint = ScriptedEndpoint(200)
    am = path(endpoint)
    r = raised()
    assert am.deliver_batch([(r, True)], [record(r)]) == []
    url, _body, headers = endpoint.calls[0]
    assert url == "http://am.example:9093/api/v2/alerts"
    assert headers["Authorization"] == "Basic dXNlcjpwdw=="  # credentials out of the URL
    assert posted(endpoint) == [
        {
            "labels": {
                "alertname": "DriftlineAssetFault",
                "asset": "ins-1",
                "severity": "critical",
                "modality": "sensor",
                "model_version": "4",
            },
            "annotations": {
                "reason": r.reason,
                "evidence": "e1, e2, e3",
                "fault": "flashover_damaged",
                "model": "insulator-sensor",
                "alert_id": r.alert_id,
            },
            "startsAt": rfc3339(NOW_MS - 5000),
            "endsAt": rfc3339(NOW_MS + 4 * 60_000),  # four re-send intervals ahead
            "generatorURL": "https://grafana.example/d/x",
        }
    ]
    assert am.posts == {("batch", "delivered"): 1}


def test_a_resolve_ends_now_and_a_start_in_the_future_is_clamped() -> None:
    endpoint = ScriptedEndpoint(200)
    am = path(endpoint)
    assert am.deliver_batch([(raised(t_ms=NOW_MS + 9000), False)], []) == []
    (item,) = posted(endpoint)
    assert item["startsAt"] == item["endsAt"] == rfc3339(NOW_MS)
    assert "modality" in item["labels"]


def test_only_the_last_change_of_a_label_set_is_posted_and_changes_keep_their_order() -> None:
    endpoint = ScriptedEndpoint(200)
    am = path(endpoint)
    warning, critical, other = raised(severity="warning"), raised(), raised("ins-2")
    # an escalation ends the warning and fires the critical; ins-2 fires, then resolves
    am.deliver_batch(
        [(other, True), (warning, False), (critical, True), (other, False)], [record(critical)]
    )
    items = posted(endpoint)
    got = [(i["labels"]["severity"], i["labels"]["asset"], i["endsAt"]) for i in items]
    assert got == [
        ("warning", "ins-1", rfc3339(NOW_MS)),
        ("critical", "ins-1", rfc3339(NOW_MS + 240_000)),
        ("critical", "ins-2", rfc3339(NOW_MS)),
    ]


def test_empty_labels_are_left_out() -> None:
    endpoint = ScriptedEndpoint(200)
    am = path(endpoint)
    am.deliver_batch([(dataclasses.replace(raised(), modality=""), True)], [])
    assert "modality" not in posted(endpoint)[0]["labels"]


@pytest.mark.parametrize(
    ("script", "reason", "why"),
    [
        ((503, 503, 503), dl.ALERTMANAGER_FAILED, "HTTP 503 after 3 attempts"),
        ((400,), dl.ALERTMANAGER_REJECTED, "HTTP 400"),
    ],
)
def test_a_batch_alertmanager_did_not_take_is_dead_lettered_with_the_reason(
    script: tuple[int, ...], reason: str, why: str
) -> None:
    endpoint = ScriptedEndpoint(*script)
    am = path(endpoint)
    r1, r2 = raised("a"), raised("b")
    undelivered = am.deliver_batch([(r1, True), (r2, True)], [record(r1), record(r2)])
    assert [(a.asset_id, u.error_class) for a, u in undelivered] == [("a", reason), ("b", reason)]
    assert why in undelivered[0][1].message
    assert "pw" not in undelivered[0][1].message
    assert "am.example" in undelivered[0][1].message


def test_a_lost_resolve_is_not_dead_lettered() -> None:
    am = path(ScriptedEndpoint(503, 503, 503))
    assert am.deliver_batch([(raised(), False)], []) == []
    assert am.posts == {("batch", "failed"): 1}


def test_no_retry_waits_past_the_batch_budget() -> None:
    endpoint = SlowEndpoint(0.2, 503, 200)
    am = path(endpoint, budget_s=0.05)
    r = raised()
    undelivered = am.deliver_batch([(r, True)], [record(r)])
    assert len(endpoint.calls) == 1  # the retry would have started after the deadline
    assert [u.error_class for _a, u in undelivered] == [dl.ALERTMANAGER_FAILED]


def test_active_alerts_are_re_sent_when_due_and_not_before() -> None:
    endpoint = ScriptedEndpoint()
    am = path(endpoint)
    assert not am.resend_due()
    am.next_resend = time.monotonic() - 1
    assert am.resend_due()
    am.resend([raised("a"), raised("b")])
    assert [i["labels"]["asset"] for i in posted(endpoint)] == ["a", "b"]
    assert all(i["endsAt"] == rfc3339(NOW_MS + 240_000) for i in posted(endpoint))
    assert not am.resend_due()
    assert am.posts == {("resend", "delivered"): 1}
    am.next_resend = time.monotonic() - 1
    am.resend([])  # nothing active: nothing posted
    assert len(endpoint.calls) == 1


def test_the_handler_re_sends_the_rules_active_alerts_from_its_idle_hook() -> None:
    endpoint = ScriptedEndpoint()
    settings = AlertsSettings(kafka=KafkaSettings(), alertmanager_url="http://am:9093", k=2, n=3)
    am = service.alertmanager_for(settings, post=endpoint)
    assert am is not None
    assert am.resend_s == 60.0
    registry = CollectorRegistry()
    handler = AlertsHandler(settings, AlertsMetrics(registry), alertmanager=am)
    for t in range(2):
        handler.engine.observe(obs("a", "X", t))
    handler.idle()
    assert endpoint.calls == []  # not due yet
    am.next_resend = time.monotonic() - 1
    handler.idle()
    assert [i["labels"]["asset"] for i in posted(endpoint)] == ["a"]
    assert (
        registry.get_sample_value(
            "driftline_alertmanager_posts_total", {"purpose": "resend", "outcome": "delivered"}
        )
        == 1
    )


def test_no_alertmanager_url_no_path() -> None:
    assert service.alertmanager_for(AlertsSettings(kafka=KafkaSettings())) is None


def test_a_bad_alertmanager_url_is_one_line_and_never_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("DRIFTLINE_ALERTMANAGER_URL", "am.example:9093?token=hunter2")
    assert main(["alerts"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("driftline alerts: DRIFTLINE_ALERTMANAGER_URL must be")
    assert len(err.strip().splitlines()) == 1
    assert "hunter2" not in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["alerts", "--alertmanager-resend-s", "0"])
    assert "must be a number of seconds > 0" in capsys.readouterr().err


def test_the_flags_reach_the_settings() -> None:
    ns = build_parser().parse_args(
        ["alerts", "--alertmanager-url", "http://am:9093", "--alertmanager-resend-s", "15"]
    )
    settings = settings_from(AlertsSettings, ns, FLAGS)
    assert settings.alertmanager_url is not None
    assert settings.alertmanager_url.get_secret_value() == "http://am:9093"
    assert settings.alertmanager_resend_s == 15


def test_help_says_where_alerts_go_and_when_they_resolve(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["alerts", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--alertmanager-url" in text
    assert "/api/v2/alerts" in text
    assert "resolved when its asset's last n windows are healthy again" in text
