"""An asset's active alert: raised, superseded, resolved when it is healthy again, rolled back."""

from __future__ import annotations

from dataclasses import replace

from driftline.services.core.alerting import (
    BELOW_K,
    HEALTHY,
    RAISED,
    RESOLVED,
    SEVERITY_CRITICAL,
    SEVERITY_WARNING,
    AlertEngine,
    AlertRules,
    Decision,
)
from tests.unit.test_alerting import obs


def feed(engine: AlertEngine, asset: str, codes: str, t0: int = 0) -> list[Decision]:
    return [engine.observe(obs(asset, c, t0 + t)) for t, c in enumerate(codes)]


def test_an_alert_resolves_once_the_last_n_windows_are_all_healthy() -> None:
    engine = AlertEngine(AlertRules(k=2, n=3, cooldown_ms=600_000))
    decisions = feed(engine, "a", "CCHHH")
    assert [d.outcome for d in decisions] == [BELOW_K, RAISED, HEALTHY, HEALTHY, RESOLVED]
    raised = decisions[1].alert
    assert raised is not None
    assert decisions[4].ended == raised  # the alert it ends is the one raised
    assert engine.active_alerts() == []
    # Healthy windows after that resolve nothing more.
    assert engine.observe(obs("a", "H", 5)).outcome == HEALTHY


def test_a_flapping_asset_stays_active_until_n_healthy_windows_in_a_row() -> None:
    engine = AlertEngine(AlertRules(k=2, n=3, cooldown_ms=600_000))
    decisions = feed(engine, "a", "CCHCHHCHHH")
    assert RESOLVED not in [d.outcome for d in decisions[:-1]]
    assert decisions[-1].outcome == RESOLVED
    assert [a.alert_id for a in engine.active_alerts()] == []


def test_a_fault_after_the_resolve_is_a_new_incident_inside_the_old_cooldown() -> None:
    engine = AlertEngine(AlertRules(k=2, n=3, cooldown_ms=600_000))
    decisions = feed(engine, "a", "CCHHHCC")
    assert [d.outcome for d in decisions] == [
        BELOW_K,
        RAISED,
        HEALTHY,
        HEALTHY,
        RESOLVED,
        BELOW_K,
        RAISED,
    ]
    assert decisions[6].ended is None  # nothing was active any more
    assert [a.raised_time_ms for a in engine.active_alerts()] == [6000]


def test_an_escalation_supersedes_the_active_alert() -> None:
    engine = AlertEngine(AlertRules(k=2, n=3, cooldown_ms=600_000))
    first = feed(engine, "a", "CC")[1]
    engine.observe(obs("a", "X", 2))  # C, C, X: still contaminated, in the cooldown
    escalated = engine.observe(obs("a", "X", 3))  # C, X, X: flashover, critical
    assert first.alert is not None
    assert first.alert.severity == SEVERITY_WARNING
    assert escalated.outcome == RAISED
    assert escalated.alert is not None
    assert escalated.alert.severity == SEVERITY_CRITICAL
    assert escalated.ended == first.alert
    assert engine.active_alerts() == [escalated.alert]


def test_active_alerts_carry_the_modality_and_are_per_asset() -> None:
    engine = AlertEngine(AlertRules(k=2, n=3))
    for t in range(2):
        engine.observe(replace(obs("img", "X", t), modality="image"))
    feed(engine, "sen", "KK")
    feed(engine, "ok", "HHH")
    active = {a.asset_id: a for a in engine.active_alerts()}
    assert set(active) == {"img", "sen"}
    assert active["img"].modality == "image"


def test_rollback_restores_the_active_alert_and_forgetting_drops_it() -> None:
    engine = AlertEngine(AlertRules(k=2, n=3))
    feed(engine, "a", "CC")
    engine.begin()
    assert feed(engine, "a", "HHH", t0=2)[-1].outcome == RESOLVED
    engine.rollback()
    assert [a.asset_id for a in engine.active_alerts()] == ["a"]
    engine.begin()
    assert feed(engine, "a", "HHH", t0=2)[-1].outcome == RESOLVED  # the replay decides the same
    engine.commit()
    feed(engine, "b", "CC")
    engine.forget_shards([0])
    assert engine.active_alerts() == []
