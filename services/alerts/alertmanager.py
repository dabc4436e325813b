"""Alertmanager: driftline's alerts as Alertmanager API v2 alerts, fired, resolved and re-sent.

Each batch's new alerts, and the alerts it ended (an asset back to healthy, or an alert
superseded by one with other labels, such as an escalation), go in one POST to
`<url>/api/v2/alerts`, with the webhook's retry policy, inside the batch's Alertmanager budget.
A firing alert's endsAt is `ENDS_AFTER_RESENDS` re-send intervals ahead; a resolved one's is now.
Alertmanager forgets an alert nobody re-sends (at its endsAt), so every active alert the rule
holds is posted again each `resend_s`, from the idle hook or after a batch, never per event.
Alertmanager identifies an alert by its labels, so re-sending (or replaying) one is harmless.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import msgspec

from driftline.schemas import deadletter as dl
from driftline.schemas.messages import Alert
from driftline.services.alerts.webhook import DELIVERED, FAILED, REJECTED, SKIPPED, RetryingPost
from driftline.services.core.alerting import RaisedAlert

log = logging.getLogger(__name__)

ALERTNAME = "DriftlineAssetFault"
API_PATH = "/api/v2/alerts"
ENDS_AFTER_RESENDS = 4  # like Prometheus: a few missed re-sends before Alertmanager lets go
MAX_PER_POST = 1000

# What a POST carried (a bounded metric label).
PURPOSE_BATCH = "batch"
PURPOSE_RESEND = "resend"

UNDELIVERED_REASONS = {
    FAILED: dl.ALERTMANAGER_FAILED,
    REJECTED: dl.ALERTMANAGER_REJECTED,
    SKIPPED: dl.ALERTMANAGER_SKIPPED,
}

Postable = dict[str, object]


def api_url(url: str) -> str:
    """The alerts endpoint of an Alertmanager base URL (a route prefix is kept)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith(API_PATH):
        path += API_PATH
    return urlunsplit(parts._replace(path=path))


def rfc3339(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def labels(alert: RaisedAlert) -> dict[str, str]:
    """The alert's identity in Alertmanager (empty values left out, as Prometheus does)."""
    pairs = {
        "alertname": ALERTNAME,
        "asset": alert.asset_id,
        "severity": alert.severity,
        "modality": alert.modality,
        "model_version": str(alert.model_version),
    }
    return {k: v for k, v in pairs.items() if v}


def postable(
    alert: RaisedAlert, *, now_ms: int, ends_ms: int, generator_url: str | None
) -> Postable:
    """One alert of the API v2 list; startsAt is the alert's event time, never after now."""
    item: Postable = {
        "labels": labels(alert),
        "annotations": {
            "reason": alert.reason,
            "evidence": ", ".join(alert.evidence_event_ids),
            "fault": alert.predicted_class,
            "model": alert.model_name,
            "alert_id": alert.alert_id,
        },
        "startsAt": rfc3339(min(alert.raised_time_ms, now_ms)),
        "endsAt": rfc3339(ends_ms),
    }
    if generator_url:
        item["generatorURL"] = generator_url
    return item


class AlertmanagerSender(RetryingPost):
    """POSTs lists of alerts to one Alertmanager's `api_url`; an outcome per POST, never raises."""

    kind = "alertmanager"

    def post_alerts(self, items: list[Postable], what: str, deadline: float | None) -> str:
        return self.send(msgspec.json.encode(items), what, deadline=deadline)


class AlertmanagerPath:
    """Sends a batch's alert changes to Alertmanager and re-sends the active ones on a timer."""

    def __init__(
        self,
        sender: AlertmanagerSender,
        *,
        resend_s: float,
        budget_s: float,
        generator_url: str | None = None,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.sender = sender
        self.resend_s = resend_s
        self.budget_s = budget_s
        self.generator_url = generator_url
        self._wall_ms = wall_ms
        self.next_resend = time.monotonic() + resend_s
        self.posts: Counter[tuple[str, str]] = Counter()  # (purpose, outcome), for the metric

    def _items(self, changes: Iterable[tuple[RaisedAlert, bool]]) -> list[Postable]:
        """The last change of each label set, as API v2 alerts (firing: True, ended: False)."""
        now_ms = self._wall_ms()
        firing_ends_ms = now_ms + round(ENDS_AFTER_RESENDS * self.resend_s * 1000)
        last: dict[frozenset[tuple[str, str]], Postable] = {}
        for alert, firing in changes:
            key = frozenset(labels(alert).items())
            ends_ms = firing_ends_ms if firing else now_ms
            last.pop(key, None)  # keep the order of the changes
            last[key] = postable(
                alert, now_ms=now_ms, ends_ms=ends_ms, generator_url=self.generator_url
            )
        return list(last.values())

    def deliver_batch(
        self, changes: list[tuple[RaisedAlert, bool]], raised: list[Alert]
    ) -> list[tuple[Alert, dl.Undelivered]]:
        """POST the batch's changes in order; returns the batch's alerts Alertmanager did not
        take, each with the reason for its dead letter (a lost resolve is only logged: the
        alert is no longer re-sent, so Alertmanager resolves it at its endsAt)."""
        items = self._items(changes)
        if not items:
            return []
        deadline = time.monotonic() + self.budget_s
        outcomes = [
            self._post(chunk, PURPOSE_BATCH, f"{len(chunk)} alert changes", deadline)
            for chunk in _chunks(items)
        ]
        failed = next((o for o in outcomes if o != DELIVERED), None)
        if failed is None or not raised:
            return []
        why = self.sender.last_error if failed != SKIPPED else self._skipped_why()
        message = f"alertmanager {self.sender.target}: {failed}: {why}"
        return [(alert, dl.Undelivered(UNDELIVERED_REASONS[failed], message)) for alert in raised]

    def resend_due(self) -> bool:
        return time.monotonic() >= self.next_resend

    def resend(self, active: list[RaisedAlert]) -> None:
        """Post every active alert again, so Alertmanager keeps them firing; never raises."""
        self.next_resend = time.monotonic() + self.resend_s
        if not active:
            return
        deadline = time.monotonic() + self.budget_s
        items = self._items((a, True) for a in active)
        outcomes = Counter(
            self._post(chunk, PURPOSE_RESEND, f"re-send of {len(chunk)} alerts", deadline)
            for chunk in _chunks(items)
        )
        if outcomes[DELIVERED] != sum(outcomes.values()):
            log.warning(
                "alertmanager %s: re-send of %d active alerts incomplete (%s); next in %.0fs",
                self.sender.target,
                len(active),
                dict(outcomes),
                self.resend_s,
            )

    def _post(self, chunk: list[Postable], purpose: str, what: str, deadline: float) -> str:
        if time.monotonic() >= deadline:
            outcome = SKIPPED
        else:
            outcome = self.sender.post_alerts(chunk, what, deadline)
        self.posts[(purpose, outcome)] += 1
        return outcome

    def _skipped_why(self) -> str:
        return f"the batch's Alertmanager budget of {self.budget_s:g}s was spent before it was sent"


def _chunks(items: list[Postable]) -> list[list[Postable]]:
    return [items[i : i + MAX_PER_POST] for i in range(0, len(items), MAX_PER_POST)]
