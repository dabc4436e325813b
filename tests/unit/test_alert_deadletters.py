"""An alert no webhook took, as a dead letter: the alert's own record, the reason in headers."""

from __future__ import annotations

import pytest

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.messages import Alert
from driftline.schemas.topics import all_specs
from driftline.services.alerts.webhook import FAILED
from driftline.services.runtime.deadletters import alert_dlq_record, describe
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
