"""Alert webhook: HTTP POST of each alert as JSON, retried with exponential backoff and jitter.

429, 5xx, timeouts and network errors are retried; any other 4xx (and a redirect, which is never
followed, so a token is never sent elsewhere) is a rejection and is not. A webhook that stays
down never blocks the stream: once an alert's retries are spent it counts as failed and the
caller moves on; while the webhook is down, later alerts get one attempt each until one succeeds.
The URL may carry a token (in its path, query or user info): it is only ever logged redacted.
"""

from __future__ import annotations

import base64
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message as HttpHeaders
from http.client import HTTPException
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import msgspec
from typing_extensions import override

from driftline.schemas.messages import Alert

log = logging.getLogger(__name__)

DELIVERED = "delivered"
REJECTED = "rejected"
FAILED = "failed"
SKIPPED = "skipped"  # not attempted: the batch's webhook time budget was spent
OUTCOMES = (DELIVERED, REJECTED, FAILED, SKIPPED)

USER_AGENT = "driftline-alerts/1"


@dataclass(frozen=True)
class Response:
    """What the retry policy needs of an HTTP response."""

    status: int
    retry_after_s: float | None = None


class HttpPost(Protocol):
    """POST `body`; return the response, raise OSError or HTTPException when none came back."""

    def __call__(
        self, url: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> Response: ...


def redact(url: str) -> str:
    """The URL with nothing secret left: scheme, host and port only."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "<invalid url>"
    rest = "/***" if (parts.path not in ("", "/") or parts.query or parts.fragment) else ""
    if parts.username or parts.password:
        netloc = f"***@{netloc}"
    return f"{parts.scheme}://{netloc}{rest}"


def _retry_after(headers: HttpHeaders | None) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    @override
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 3xx surfaces as an HTTPError: a rejection


class UrllibPost:
    """HttpPost over the standard library (no extra dependency), redirects not followed."""

    def __init__(self) -> None:
        self._opener = urllib.request.build_opener(_NoRedirect())

    def __call__(
        self, url: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> Response:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=timeout_s) as response:
                response.read()
                return Response(int(response.status))
        except urllib.error.HTTPError as exc:
            with exc:
                return Response(exc.code, _retry_after(exc.headers))


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Wait before retry `attempt` (0-based): exponential, capped, jittered to [half, full]."""
    ceiling = min(max_s, base_s * (2**attempt))
    return rng.uniform(ceiling / 2, ceiling)


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


class RetryingPost:
    """POSTs bodies to one URL with the retry policy above; returns an outcome, never raises.

    `kind` names the endpoint in log lines ("webhook", "alertmanager").
    """

    kind = "webhook"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 10.0,
        post: HttpPost | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{self.kind} URL must be http(s)://host/...: {redact(url)}")
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if parts.username is not None or parts.password is not None:
            # urllib ignores user info in a URL: send it as basic auth, and strip it.
            user = f"{parts.username or ''}:{parts.password or ''}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
            host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
            parts = parts._replace(netloc=host)
        self._url = urlunsplit(parts)
        self._raw_url = url
        self.target = redact(url)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._post: HttpPost = post or UrllibPost()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_retry = on_retry
        self.down = False
        # Why the last body was not delivered ("" once one was): for its dead letter.
        self.last_error = ""

    def _scrub(self, text: str) -> str:
        for secret in (self._raw_url, self._url):
            text = text.replace(secret, self.target)
        return text

    def send(
        self,
        body: bytes,
        what: str,
        headers: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> str:
        """POST `body` (`what` it holds, for the logs), retrying; no retry waits past `deadline`
        (a time.monotonic() value)."""
        headers = {**self._headers, **(headers or {})}
        attempts = 1 if self.down else 1 + self.retries
        why, wait = "", 0.0
        for attempt in range(attempts):
            if attempt:
                if deadline is not None and time.monotonic() + wait > deadline:
                    attempts = attempt  # the budget does not allow another try
                    break
                log.warning(
                    "%s %s: %s for %s, retry %d/%d in %.2fs",
                    self.kind,
                    self.target,
                    why,
                    what,
                    attempt,
                    attempts - 1,
                    wait,
                )
                if self._on_retry is not None:
                    self._on_retry()
                self._sleep(wait)
            try:
                response = self._post(self._url, body, headers, self.timeout_s)
            except (OSError, HTTPException) as exc:
                why = self._scrub(f"{type(exc).__name__}: {exc}")
                wait = backoff_s(attempt, self.backoff_base_s, self.backoff_max_s, self._rng)
                continue
            if 200 <= response.status < 300:
                self.down = False
                self.last_error = ""
                return DELIVERED
            if not retryable(response.status):
                self.down = False
                self.last_error = f"HTTP {response.status}"
                log.warning(
                    "%s %s rejected %s with HTTP %d; not retried",
                    self.kind,
                    self.target,
                    what,
                    response.status,
                )
                return REJECTED
            why = f"HTTP {response.status}"
            wait = backoff_s(attempt, self.backoff_base_s, self.backoff_max_s, self._rng)
            if response.retry_after_s is not None:
                wait = min(self.backoff_max_s, max(wait, response.retry_after_s))
        self.down = True
        self.last_error = f"{why} after {attempts} attempts"
        log.error(
            "%s %s: %s not delivered after %d attempts (%s); moving on, later "
            "posts get one attempt each until it answers",
            self.kind,
            self.target,
            what,
            attempts,
            why,
        )
        return FAILED


class WebhookSender(RetryingPost):
    """Delivers alerts to one URL; returns an outcome per alert and never raises."""

    def deliver(self, alert: Alert) -> str:
        """POST one alert (its id as Idempotency-Key, so a replayed alert can be deduplicated)."""
        body = msgspec.json.encode(alert)
        return self.send(body, f"alert {alert.alert_id}", {"Idempotency-Key": alert.alert_id})
