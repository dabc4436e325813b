"""The alert rule (k of the last n per asset, severity, cooldown, replays) and webhook policy."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from typing_extensions import override

from driftline.schemas.messages import Alert
from driftline.services.alerts.webhook import (
    DELIVERED,
    FAILED,
    REJECTED,
    HttpPost,
    Response,
    WebhookSender,
    redact,
)
from driftline.services.core.alerting import (
    BELOW_K,
    COOLDOWN,
    DUPLICATE,
    HEALTHY,
    LATE,
    RAISED,
    RULE_ESCALATION,
    RULE_K_OF_N,
    SEVERITY_CRITICAL,
    SEVERITY_WARNING,
    AlertEngine,
    AlertRules,
    Decision,
    Observation,
    alert_id,
)

CLASS = {
    "H": "healthy",
    "C": "contaminated",
    "K": "cracked",
    "X": "flashover_damaged",
}


def obs(
    asset: str, cls: str, t_s: float, conf: float = 0.9, event_id: str | None = None
) -> Observation:
    """An observation; `cls` is one letter of CLASS, the event id defaults to asset@time."""
    return Observation(
        event_id=event_id or f"{asset}@{t_s:g}",
        asset_id=asset,
        predicted_class=CLASS[cls],
        confidence=conf,
        event_time_ms=int(t_s * 1000),
        model_name="insulator-sensor",
        model_version=3,
    )


def run(rules: AlertRules, stream: list[Observation]) -> list[Decision]:
    engine = AlertEngine(rules)
    return [engine.observe(o) for o in stream]


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: list[Observation]
    outcomes: list[str]
    rules: dict[str, Any] = field(default_factory=dict)
    # (index of the decision, severity, rule, evidence event ids) of every raised alert.
    alerts: list[tuple[int, str, str, tuple[str, ...]]] = field(default_factory=list)


SCENARIOS = [
    Scenario(
        "raises at k of n",
        [obs("a", "C", 0), obs("a", "H", 1), obs("a", "C", 2), obs("a", "C", 3)],
        [BELOW_K, HEALTHY, BELOW_K, RAISED],
        alerts=[(3, SEVERITY_WARNING, RULE_K_OF_N, ("a@0", "a@2", "a@3"))],
    ),
    Scenario(
        "no raise below k: faulty windows spread wider than n",
        [obs("a", c, t) for t, c in enumerate("CHHHHCHHHHCHHHC")],
        [BELOW_K if c == "C" else HEALTHY for c in "CHHHHCHHHHCHHHC"],
    ),
    Scenario(
        "the oldest faulty window slides out before the k-th arrives",
        [obs("a", c, t) for t, c in enumerate("CCHHHC")],
        [BELOW_K, BELOW_K, HEALTHY, HEALTHY, HEALTHY, BELOW_K],
    ),
    Scenario(
        "cooldown suppresses until cooldown_ms of event time passed",
        [obs("a", "C", t) for t in (0, 1, 2, 30, 60.9, 61)],
        [BELOW_K, RAISED, COOLDOWN, COOLDOWN, COOLDOWN, RAISED],
        rules={"k": 2, "n": 3, "cooldown_ms": 60_000},
        alerts=[
            (1, SEVERITY_WARNING, RULE_K_OF_N, ("a@0", "a@1")),
            (5, SEVERITY_WARNING, RULE_K_OF_N, ("a@30", "a@60.9", "a@61")),
        ],
    ),
    Scenario(
        "a persistent fault with no cooldown raises on every faulty window",
        [obs("a", "X", t) for t in range(4)],
        [BELOW_K, RAISED, RAISED, RAISED],
        rules={"k": 2, "n": 3, "cooldown_ms": 0},
        alerts=[
            (1, SEVERITY_CRITICAL, RULE_K_OF_N, ("a@0", "a@1")),
            (2, SEVERITY_CRITICAL, RULE_K_OF_N, ("a@0", "a@1", "a@2")),
            (3, SEVERITY_CRITICAL, RULE_K_OF_N, ("a@1", "a@2", "a@3")),
        ],
    ),
    Scenario(
        "escalation to a higher severity passes the cooldown, then restarts it",
        [obs("a", c, t) for t, c in enumerate("CCXXX")],
        [BELOW_K, RAISED, COOLDOWN, RAISED, COOLDOWN],
        rules={"k": 2, "n": 3, "cooldown_ms": 600_000},
        alerts=[
            (1, SEVERITY_WARNING, RULE_K_OF_N, ("a@0", "a@1")),
            (3, SEVERITY_CRITICAL, RULE_ESCALATION, ("a@1", "a@2", "a@3")),
        ],
    ),
    Scenario(
        "cracked turns critical when every one of the last n windows is cracked",
        [obs("a", "K", t) for t in range(4)],
        [BELOW_K, RAISED, RAISED, COOLDOWN],
        rules={"k": 2, "n": 3, "cooldown_ms": 600_000},
        alerts=[
            (1, SEVERITY_WARNING, RULE_K_OF_N, ("a@0", "a@1")),
            (2, SEVERITY_CRITICAL, RULE_ESCALATION, ("a@0", "a@1", "a@2")),
        ],
    ),
    Scenario(
        "a lower severity during the cooldown stays suppressed",
        [obs("a", c, t) for t, c in enumerate("XXCCC")],
        [BELOW_K, RAISED, COOLDOWN, COOLDOWN, COOLDOWN],
        rules={"k": 2, "n": 3, "cooldown_ms": 600_000},
        alerts=[(1, SEVERITY_CRITICAL, RULE_K_OF_N, ("a@0", "a@1"))],
    ),
    Scenario(
        "out-of-order events are placed by event time; evidence is time-ordered",
        [obs("a", "C", 10), obs("a", "C", 30), obs("a", "C", 20)],
        [BELOW_K, BELOW_K, RAISED],
        alerts=[(2, SEVERITY_WARNING, RULE_K_OF_N, ("a@10", "a@20", "a@30"))],
    ),
    Scenario(
        "an event older than all of the last n windows is late and changes nothing",
        [obs("a", "H", 10), obs("a", "C", 11), obs("a", "C", 12), obs("a", "C", 5)],
        [HEALTHY, BELOW_K, RAISED, LATE],
        rules={"k": 2, "n": 3, "cooldown_ms": 0},
        alerts=[(2, SEVERITY_WARNING, RULE_K_OF_N, ("a@11", "a@12"))],
    ),
    Scenario(
        "a late arrival cannot reopen a cooldown: the asset clock is its newest window",
        [obs("a", "C", 0), obs("a", "C", 100), obs("a", "C", 50)],
        [BELOW_K, RAISED, COOLDOWN],
        rules={"k": 2, "n": 5, "cooldown_ms": 60_000},
        alerts=[(1, SEVERITY_WARNING, RULE_K_OF_N, ("a@0", "a@100"))],
    ),
    Scenario(
        "a replayed event id is a duplicate and is not counted twice",
        [obs("a", "C", 0), obs("a", "C", 0), obs("a", "C", 1)],
        [BELOW_K, DUPLICATE, RAISED],
        rules={"k": 2, "n": 3},
        alerts=[(2, SEVERITY_WARNING, RULE_K_OF_N, ("a@0", "a@1"))],
    ),
    Scenario(
        "per-asset isolation: one asset's faults never count for another",
        [obs("a", "C", 0), obs("b", "C", 1), obs("b", "H", 2), obs("a", "C", 3)],
        [BELOW_K, BELOW_K, HEALTHY, RAISED],
        rules={"k": 2, "n": 3},
        alerts=[(3, SEVERITY_WARNING, RULE_K_OF_N, ("a@0", "a@3"))],
    ),
    Scenario(
        "a faulty prediction below min_confidence counts as a healthy window",
        [obs("a", "X", 0, conf=0.4), obs("a", "X", 1, conf=0.9), obs("a", "X", 2, conf=0.6)],
        [HEALTHY, BELOW_K, RAISED],
        rules={"k": 2, "n": 3, "min_confidence": 0.5},
        alerts=[(2, SEVERITY_CRITICAL, RULE_K_OF_N, ("a@1", "a@2"))],
    ),
    Scenario(
        "mixed faults: the most frequent class names the alert, ties go to the more severe",
        [obs("a", c, t) for t, c in enumerate("CKXK")],
        [BELOW_K, BELOW_K, RAISED, COOLDOWN],
        rules={"k": 3, "n": 5},
        alerts=[(2, SEVERITY_CRITICAL, RULE_K_OF_N, ("a@0", "a@1", "a@2"))],
    ),
]


@pytest.mark.parametrize("case", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(case: Scenario) -> None:
    decisions = run(AlertRules(**case.rules), case.stream)
    assert [d.outcome for d in decisions] == case.outcomes
    raised = [
        (i, d.alert.severity, d.alert.rule, d.alert.evidence_event_ids)
        for i, d in enumerate(decisions)
        if d.alert is not None
    ]
    assert raised == case.alerts


def test_alert_fields_and_deterministic_id() -> None:
    stream = [obs("a", "X", 0), obs("a", "X", 1), obs("a", "X", 2)]
    first = run(AlertRules(), stream)[-1].alert
    again = run(AlertRules(), stream)[-1].alert
    assert first is not None
    assert first == again
    assert first.alert_id == alert_id("a", "a@2")
    assert first.asset_id == "a"
    assert first.predicted_class == "flashover_damaged"
    assert first.reason == "3 of the last 3 windows faulty (flashover_damaged: 3)"
    assert (first.model_name, first.model_version) == ("insulator-sensor", 3)
    assert first.raised_time_ms == 2000
    assert alert_id("a", "a@2") != alert_id("b", "a@2")


def test_rollback_undoes_a_batch_so_its_replay_decides_the_same() -> None:
    engine = AlertEngine(AlertRules(k=2, n=3, cooldown_ms=60_000))
    engine.begin()
    assert engine.observe(obs("a", "C", 0)).outcome == BELOW_K
    engine.commit()
    batch = [obs("a", "C", 1), obs("b", "X", 1), obs("b", "X", 2)]
    engine.begin()
    first = [engine.observe(o) for o in batch]
    engine.rollback()
    assert len(engine) == 1  # b, new in the undone batch, is gone again
    engine.begin()
    replay = [engine.observe(o) for o in batch]
    engine.commit()
    assert replay == first
    assert [d.outcome for d in replay] == [RAISED, BELOW_K, RAISED]


def test_tracked_assets_are_bounded_least_recently_seen_first() -> None:
    engine = AlertEngine(AlertRules(k=2, n=3, max_assets=2))
    engine.observe(obs("a", "C", 0))
    engine.observe(obs("b", "C", 0))
    engine.observe(obs("a", "H", 1))  # a is now the most recently seen
    engine.observe(obs("c", "C", 0))  # evicts b
    assert len(engine) == 2
    assert engine.evicted == 1
    assert engine.observe(obs("b", "C", 1)).outcome == BELOW_K  # b's first fault was forgotten
    assert engine.observe(obs("c", "C", 1)).outcome == RAISED


def test_forget_shards_drops_the_assets_of_revoked_partitions() -> None:
    engine = AlertEngine(AlertRules(k=2, n=3))
    engine.observe(obs("a", "C", 0), shard=0)
    engine.observe(obs("b", "C", 0), shard=1)
    assert engine.forget_shards([1]) == 1
    assert engine.observe(obs("b", "C", 1), shard=1).outcome == BELOW_K
    assert engine.observe(obs("a", "C", 1), shard=0).outcome == RAISED


def test_severity_table() -> None:
    rules = AlertRules(n=5)
    assert rules.severity("flashover_damaged", 1) == SEVERITY_CRITICAL
    assert rules.severity("cracked", 4) == SEVERITY_WARNING
    assert rules.severity("cracked", 5) == SEVERITY_CRITICAL
    assert AlertRules(n=5, critical_count=4).severity("cracked", 4) == SEVERITY_CRITICAL
    assert rules.severity("contaminated", 5) == SEVERITY_WARNING


@pytest.mark.parametrize(
    "bad",
    [
        {"k": 0},
        {"k": 4, "n": 3},
        {"cooldown_ms": -1},
        {"min_confidence": 1.5},
        {"critical_count": 9},
        {"max_assets": 0},
    ],
)
def test_invalid_rules_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        AlertRules(**bad)


# The webhook's retry policy, against an in-memory endpoint (the HttpPost port's twin).


class ScriptedEndpoint(HttpPost):
    """Answers POSTs from a script: an HTTP status, a (status, Retry-After), or an OSError."""

    def __init__(self, *script: int | tuple[int, float] | OSError) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    @override
    def __call__(
        self, url: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> Response:
        self.calls.append((url, body, headers))
        step = self.script.pop(0) if self.script else 200
        if isinstance(step, OSError):
            raise step
        if isinstance(step, tuple):
            return Response(step[0], step[1])
        return Response(step)


def sender(
    endpoint: ScriptedEndpoint, url: str = "https://hooks.example/a?token=t0k"
) -> tuple[WebhookSender, list[float]]:
    sleeps: list[float] = []
    hook = WebhookSender(
        url,
        retries=3,
        backoff_base_s=1.0,
        backoff_max_s=4.0,
        post=endpoint,
        sleep=sleeps.append,
        rng=random.Random(0),
    )
    return hook, sleeps


ALERT = Alert(
    alert_id="abc",
    asset_id="a",
    severity="critical",
    reason="3 of the last 5 windows faulty (flashover_damaged: 3)",
    predicted_class="flashover_damaged",
    evidence_event_ids=["e1", "e2", "e3"],
    model_name="insulator-sensor",
    model_version=3,
    raised_time_ms=1000,
)


def test_webhook_retries_5xx_and_network_errors_with_growing_jittered_backoff() -> None:
    endpoint = ScriptedEndpoint(503, ConnectionRefusedError("refused"), 500, 200)
    hook, sleeps = sender(endpoint)
    assert hook.deliver(ALERT) == DELIVERED
    assert len(endpoint.calls) == 4
    for attempt, slept in enumerate(sleeps):
        ceiling = min(4.0, 2.0**attempt)
        assert ceiling / 2 <= slept <= ceiling
    _url, body, headers = endpoint.calls[0]
    assert json.loads(body)["alert_id"] == "abc"
    assert headers["Idempotency-Key"] == "abc"
    assert headers["Content-Type"] == "application/json"


def test_webhook_honours_retry_after_up_to_the_backoff_cap() -> None:
    hook, sleeps = sender(ScriptedEndpoint((429, 3.0), (503, 60.0), 200))
    assert hook.deliver(ALERT) == DELIVERED
    assert sleeps == [3.0, 4.0]


def test_webhook_does_not_retry_a_4xx() -> None:
    endpoint = ScriptedEndpoint(400)
    hook, sleeps = sender(endpoint)
    assert hook.deliver(ALERT) == REJECTED
    assert len(endpoint.calls) == 1
    assert sleeps == []


def test_a_webhook_that_stays_down_fails_and_then_costs_one_attempt_per_alert() -> None:
    endpoint = ScriptedEndpoint(*([503] * 5))
    hook, _sleeps = sender(endpoint)
    assert hook.deliver(ALERT) == FAILED
    assert len(endpoint.calls) == 4
    assert hook.deliver(ALERT) == FAILED
    assert len(endpoint.calls) == 5
    assert hook.deliver(ALERT) == DELIVERED  # back up: full retries again from now on
    assert not hook.down


def test_webhook_url_secrets_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    assert redact("https://user:pw@hooks.example:8443/T0/B1/XYZ?token=t") == (
        "https://***@hooks.example:8443/***"
    )
    assert redact("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    secret = "https://user:pw@hooks.example/services/XYZ?token=t0k"
    endpoint = ScriptedEndpoint(OSError(f"cannot reach {secret}"), 500, 500, 500)
    hook, _sleeps = sender(endpoint, secret)
    assert hook.deliver(ALERT) == FAILED
    assert "hooks.example" in caplog.text
    for leak in ("t0k", "pw", "XYZ"):
        assert leak not in caplog.text
    url, _body, headers = endpoint.calls[0]
    assert url == "https://hooks.example/services/XYZ?token=t0k"  # user info moved to a header
    assert headers["Authorization"] == "Basic dXNlcjpwdw=="
