"""Alert rules: debounce faulty predictions per asset (k of the last n), severity, cooldown.

Pure and deterministic. Every decision depends only on the observations and the order they
arrive in (event time, never wall time), so replaying the same records from the same state
gives the same alerts with the same ids; downstream deduplicates on `alert_id`.

Rules (see docs/alerts.md):
- A window counts as faulty when its predicted class is a faulty class and its confidence is
  at least `min_confidence`; the last `n` windows of each asset (by event time) are kept.
- When a faulty window arrives and at least `k` of the last `n` are faulty, an alert is due.
  Its class is the most frequent faulty class among them (ties: the more severe, then by name).
- Severity: flashover_damaged is critical; cracked is a warning, critical once `critical_count`
  (default n) of the last n windows are cracked; contaminated and any other faulty class are
  warnings.
- Cooldown per asset: after an alert, no other alert for `cooldown_ms` of event time, except an
  escalation to a higher severity, which is raised at once and restarts the cooldown.
- An asset's newest alert stays active until the asset returns to healthy: a healthy window that
  leaves none of its last n windows faulty resolves it (n healthy windows in a row, so a flapping
  asset does not resolve and re-raise at every window), and ends its cooldown: a fault after that
  is a new incident and alerts at once.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from driftline.schemas.contracts import FAULTY_CLASSES

SEVERITY_INFO = "info"
SEVERITY_WARNING = "warning"
SEVERITY_CRITICAL = "critical"
SEVERITY_RANK = {SEVERITY_INFO: 0, SEVERITY_WARNING: 1, SEVERITY_CRITICAL: 2}

# Fault classes with a fixed severity, and those that escalate with how often they are seen.
CRITICAL_CLASSES = frozenset({"flashover_damaged"})
ESCALATING_CLASSES = frozenset({"cracked"})

# Which rule raised an alert (a bounded metric label).
RULE_K_OF_N = "k_of_n"
RULE_ESCALATION = "escalation"

# What became of one observation. Only RAISED produces an alert; the suppressions are the
# faulty windows that did not raise one.
RAISED = "raised"
RESOLVED = "resolved"
HEALTHY = "healthy"
BELOW_K = "below_k"
COOLDOWN = "cooldown"
DUPLICATE = "duplicate"
LATE = "late"
SUPPRESSIONS = (BELOW_K, COOLDOWN, DUPLICATE, LATE)


@dataclass(frozen=True)
class AlertRules:
    """The debounce, severity and cooldown rule, and the memory bound."""

    k: int = 3
    n: int = 5
    cooldown_ms: int = 300_000
    min_confidence: float = 0.0
    faulty_classes: frozenset[str] = frozenset(FAULTY_CLASSES)
    critical_count: int | None = None
    max_assets: int = 100_000

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"need 1 <= k <= n, got k={self.k}, n={self.n}")
        if self.cooldown_ms < 0:
            raise ValueError("cooldown_ms must not be negative")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError("min_confidence must be within [0, 1]")
        if self.critical_count is not None and not 1 <= self.critical_count <= self.n:
            raise ValueError("critical_count must be within [1, n]")
        if self.max_assets < 1:
            raise ValueError("max_assets must be at least 1")

    def severity(self, fault_class: str, count: int) -> str:
        """Severity of `count` windows of `fault_class` among the last n."""
        if fault_class in CRITICAL_CLASSES:
            return SEVERITY_CRITICAL
        if fault_class in ESCALATING_CLASSES and count >= (self.critical_count or self.n):
            return SEVERITY_CRITICAL
        return SEVERITY_WARNING


@dataclass(frozen=True)
class Observation:
    """One scored window of one asset: what the alert rule needs of an InferenceResult."""

    event_id: str
    asset_id: str
    predicted_class: str
    confidence: float
    event_time_ms: int
    model_name: str = ""
    model_version: int = 0
    modality: str = ""


@dataclass(frozen=True)
class RaisedAlert:
    """An alert to publish; `raised_time_ms` is the event time of its newest window."""

    alert_id: str
    asset_id: str
    severity: str
    rule: str
    reason: str
    predicted_class: str
    evidence_event_ids: tuple[str, ...]
    model_name: str
    model_version: int
    raised_time_ms: int
    modality: str = ""


@dataclass(frozen=True)
class Decision:
    """The outcome of one observation, and the alert when the outcome is RAISED.

    `ended` is the asset's active alert that this observation ends: resolved (RESOLVED) or
    superseded by the new `alert` (RAISED).
    """

    outcome: str
    alert: RaisedAlert | None = None
    ended: RaisedAlert | None = None


@dataclass(frozen=True)
class _Window:
    event_time_ms: int
    event_id: str
    faulty: bool
    predicted_class: str


@dataclass
class _AssetState:
    shard: int
    windows: list[_Window] = field(default_factory=list)  # sorted by (event time, event id)
    last_alert_ms: int | None = None
    last_severity: str | None = None
    active: RaisedAlert | None = None  # the newest alert, until the asset is healthy again

    def copy(self) -> _AssetState:
        return replace(self, windows=list(self.windows))


def alert_id(asset_id: str, trigger_event_id: str) -> str:
    """Deterministic id: one event triggers at most one alert for its asset."""
    digest = hashlib.sha256(f"{asset_id}\x00{trigger_event_id}".encode()).hexdigest()
    return digest[:32]


def _dominant_class(faulty: list[_Window], rules: AlertRules) -> tuple[str, int]:
    counts = Counter(w.predicted_class for w in faulty)
    best = max(
        counts.items(),
        key=lambda kv: (kv[1], SEVERITY_RANK[rules.severity(kv[0], kv[1])], kv[0]),
    )
    return best


class AlertEngine:
    """Per-asset state of the last n windows; decides, per observation, whether to alert.

    Memory is bounded: at most `max_assets` assets are tracked, the least recently seen is
    forgotten first. `begin` / `commit` / `rollback` bracket a batch, so a batch whose alerts
    could not be delivered is undone and replayed without counting its windows twice.
    """

    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self._assets: OrderedDict[str, _AssetState] = OrderedDict()
        self._journal: dict[str, _AssetState | None] | None = None
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._assets)

    def begin(self) -> None:
        """Start recording changes, so `rollback` can undo everything until `commit`."""
        self._journal = {}

    def commit(self) -> None:
        self._journal = None

    def rollback(self) -> None:
        """Restore every asset's state as it was at `begin`."""
        journal, self._journal = self._journal, None
        for asset_id, before in (journal or {}).items():
            if before is None:
                self._assets.pop(asset_id, None)
            else:
                self._assets[asset_id] = before

    def _touch(self, asset_id: str) -> None:
        if self._journal is not None and asset_id not in self._journal:
            state = self._assets.get(asset_id)
            self._journal[asset_id] = None if state is None else state.copy()

    def active_alerts(self) -> list[RaisedAlert]:
        """Every tracked asset's active alert (raised, not yet resolved)."""
        return [s.active for s in self._assets.values() if s.active is not None]

    def forget_shards(self, shards: Iterable[int]) -> int:
        """Forget the assets read from these shards (revoked partitions); returns how many."""
        drop = set(shards)
        gone = [a for a, s in self._assets.items() if s.shard in drop]
        for asset_id in gone:
            self._touch(asset_id)
            del self._assets[asset_id]
        return len(gone)

    def _state(self, asset_id: str, shard: int) -> _AssetState:
        self._touch(asset_id)
        state = self._assets.get(asset_id)
        if state is None:
            state = self._assets[asset_id] = _AssetState(shard=shard)
            while len(self._assets) > self.rules.max_assets:
                oldest = next(iter(self._assets))
                self._touch(oldest)
                del self._assets[oldest]
                self.evicted += 1
        else:
            state.shard = shard
            self._assets.move_to_end(asset_id)
        return state

    def observe(self, obs: Observation, shard: int = 0) -> Decision:
        """Fold one observation into its asset's state and decide whether it raises an alert."""
        rules = self.rules
        state = self._state(obs.asset_id, shard)
        windows = state.windows
        if any(w.event_id == obs.event_id for w in windows):
            return Decision(DUPLICATE)
        faulty = obs.predicted_class in rules.faulty_classes and (
            obs.confidence >= rules.min_confidence
        )
        window = _Window(obs.event_time_ms, obs.event_id, faulty, obs.predicted_class)
        key = (window.event_time_ms, window.event_id)
        at = bisect.bisect_left([(w.event_time_ms, w.event_id) for w in windows], key)
        if len(windows) >= rules.n and at == 0:
            # Older than every one of the last n windows: it no longer changes the picture.
            return Decision(LATE if faulty else HEALTHY)
        windows.insert(at, window)
        if len(windows) > rules.n:
            del windows[0]
        if not faulty:
            if state.active is None or any(w.faulty for w in windows):
                return Decision(HEALTHY)
            resolved, state.active = state.active, None
            state.last_alert_ms = state.last_severity = None
            return Decision(RESOLVED, ended=resolved)
        evidence = [w for w in windows if w.faulty]
        if len(evidence) < rules.k:
            return Decision(BELOW_K)
        fault_class, count = _dominant_class(evidence, rules)
        severity = rules.severity(fault_class, count)
        # The asset's clock is its newest window's event time (it never goes back: windows
        # only ever lose their oldest), so an out-of-order arrival cannot reopen a cooldown.
        newest_ms = windows[-1].event_time_ms
        rule = RULE_K_OF_N
        if state.last_alert_ms is not None and newest_ms < state.last_alert_ms + rules.cooldown_ms:
            previous = SEVERITY_RANK.get(state.last_severity or "", 0)
            if SEVERITY_RANK[severity] <= previous:
                return Decision(COOLDOWN)
            rule = RULE_ESCALATION
        state.last_alert_ms = newest_ms
        state.last_severity = severity
        reason = (
            f"{len(evidence)} of the last {len(windows)} windows faulty ({fault_class}: {count})"
        )
        if rule == RULE_ESCALATION:
            reason = f"escalated to {severity}: {reason}"
        raised = RaisedAlert(
            alert_id=alert_id(obs.asset_id, obs.event_id),
            asset_id=obs.asset_id,
            severity=severity,
            rule=rule,
            reason=reason,
            predicted_class=fault_class,
            evidence_event_ids=tuple(w.event_id for w in evidence),
            model_name=obs.model_name,
            model_version=obs.model_version,
            raised_time_ms=newest_ms,
            modality=obs.modality,
        )
        superseded, state.active = state.active, raised
        return Decision(RAISED, raised, superseded)
