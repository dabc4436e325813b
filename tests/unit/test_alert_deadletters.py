"""An alert no webhook took, as a dead letter: the alert's own record, the reason in headers."""

from __future__ import annotations

import time

import msgspec
import pytest
from prometheus_client import CollectorRegistry
from typing_extensions import override

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.messages import Alert
from driftline.schemas.topics import all_specs
from driftline.services.alerts.handler import AlertsHandler, BatchStats
from driftline.services.alerts.metrics import AlertsMetrics
from driftline.services.alerts.settings import AlertsSettings
from driftline.services.alerts.webhook import DELIVERED, FAILED, REJECTED, SKIPPED, Response
from driftline.services.runtime.deadletters import alert_dlq_record, describe
from driftline.services.runtime.settings import KafkaSettings
from tests.unit.test_alerting import ALERT, ScriptedEndpoint, sender


@pytest.mark.parametrize("reason", dl.WEBHOOK_REASONS)
def test_an_undelivered_alert_becomes_the_alerts_record_with_its_reason(reason: str) -> None:
    why = dl.Undelivered(reason, "webhook https://hooks.example/***: failed: HTTP 503")
    rec = alert_dlq_record(ALERT, ("t1.alerts", 2, 41), why, "alerts")
    # The record the alerts topic holds: key the asset id, value the Avro alert.
    assert rec.key == b"a"
    assert rec.value is not None
    assert codec.decode(Alert, rec.value, codec.content_type_of(rec.headers)) == ALERT
    assert codec.content_type_of(rec.headers) == h.CONTENT_TYPE_AVRO
    # The same envelope every dead letter carries, read back from the headers.
    back = dl.from_headers(rec.headers, rec.key, rec.value)
    assert back == rec.envelope
    assert (back.source_topic, back.source_partition, back.source_offset) == ("t1.alerts", 2, 41)
    assert (back.error_class, back.service) == (reason, "alerts")
    assert back.error_message == why.message
    assert back.failed_time_ms > 0
    assert "t1.alerts[2]@41" in describe(back)


def test_alerts_have_a_dead_letter_topic() -> None:
    assert "alerts.dlq" in {s.base for s in all_specs()}


def test_the_sender_says_why_an_alert_was_not_delivered() -> None:
    hook, _sleeps = sender(ScriptedEndpoint(503, ConnectionRefusedError("refused"), 500, 503))
    assert hook.deliver(ALERT) == FAILED
    assert hook.last_error == "HTTP 503 after 4 attempts"
    hook, _sleeps = sender(ScriptedEndpoint(ConnectionRefusedError("refused")))
    hook.down = True  # one attempt only
    assert hook.deliver(ALERT) == FAILED
    assert hook.last_error == "ConnectionRefusedError: refused after 1 attempts"
    hook, _sleeps = sender(ScriptedEndpoint(404, 200))
    hook.deliver(ALERT)
    assert hook.last_error == "HTTP 404"
    hook.deliver(ALERT)
    assert hook.last_error == ""


class SlowEndpoint(ScriptedEndpoint):
    """A scripted endpoint whose first answer takes `first_s`: it spends the batch's budget."""

    def __init__(self, first_s: float, *script: int | tuple[int, float] | OSError) -> None:
        super().__init__(*script)
        self.first_s = first_s

    @override
    def __call__(
        self, url: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> Response:
        if not self.calls:
            time.sleep(self.first_s)
        return super().__call__(url, body, headers, timeout_s)


def alerts(n: int) -> list[Alert]:
    return [msgspec.structs.replace(ALERT, alert_id=f"id-{i}") for i in range(n)]


def test_every_alert_the_webhook_did_not_take_gets_the_reason_of_its_outcome() -> None:
    settings = AlertsSettings(kafka=KafkaSettings(), webhook_batch_budget_s=60)
    handler = AlertsHandler(settings, AlertsMetrics(CollectorRegistry()))
    # delivered; rejected (404); failed (503 on every attempt); delivered
    hook, _sleeps = sender(ScriptedEndpoint(200, 404, 503, 503, 503, 503, 200))
    stats = BatchStats(alerts=alerts(4))
    undelivered = handler._call_webhook(hook, stats)
    assert [(a.alert_id, r.error_class) for a, r in undelivered] == [
        ("id-1", dl.WEBHOOK_REJECTED),
        ("id-2", dl.WEBHOOK_FAILED),
    ]
    assert "HTTP 404" in undelivered[0][1].message
    assert "HTTP 503 after 4 attempts" in undelivered[1][1].message
    assert all("t0k" not in r.message for _a, r in undelivered)
    assert stats.webhook == {DELIVERED: 2, REJECTED: 1, FAILED: 1}


def test_alerts_left_when_the_budget_is_spent_are_dead_lettered_as_skipped() -> None:
    settings = AlertsSettings(kafka=KafkaSettings(), webhook_batch_budget_s=0.05)
    handler = AlertsHandler(settings, AlertsMetrics(CollectorRegistry()))
    hook, _sleeps = sender(SlowEndpoint(0.2, 200))
    stats = BatchStats(alerts=alerts(3))
    undelivered = handler._call_webhook(hook, stats)
    assert [(a.alert_id, r.error_class) for a, r in undelivered] == [
        ("id-1", dl.WEBHOOK_SKIPPED),
        ("id-2", dl.WEBHOOK_SKIPPED),
    ]
    assert "budget of 0.05s" in undelivered[0][1].message
    assert stats.webhook == {DELIVERED: 1, SKIPPED: 2}
