"""What `driftline doctor` checks: findings, and the registry, Redis and service checks.

Each check returns findings (OK, WARN or FAIL, what was seen, what to do) and never raises
for a problem of the deployment: an unreachable broker, a missing topic or a champion that
does not verify is a FAIL finding, not an exception. Every network wait is bounded. The Kafka
checks (brokers, topics) are in kafka_checks.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from driftline.services.runtime.settings import KafkaSettings

OK = "OK"
WARN = "WARN"
FAIL = "FAIL"

HTTP_TIMEOUT_S = 3.0
REDIS_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Finding:
    """One line of the report: which check, about what, its verdict, why, and what to do."""

    check: str
    subject: str
    status: str
    detail: str
    action: str = ""

    def line(self) -> str:
        todo = f": {self.action}" if self.action else ""
        detail = self.detail.rstrip(".") if todo else self.detail
        return f"{self.status:<4}  {self.check} {self.subject}: {detail}{todo}"


def topics_create(kafka: KafkaSettings) -> str:
    prefix = f" --topic-prefix {kafka.topic_prefix}" if kafka.topic_prefix else ""
    return f"run `driftline topics create{prefix}`"


def check_registry(
    kafka: KafkaSettings,
    modalities: list[str],
    artifact_root: str,
    public_key: str | None,
    timeout_s: float,
) -> list[Finding]:
    """A champion per modality, whose artifact fetches and verifies as a consumer checks it."""
    from driftline.schemas.contracts import MODEL_NAMES
    from driftline.services.runtime import registry
    from driftline.services.runtime.artifacts import (
        REJECT_DIGEST,
        REJECT_FETCH,
        ArtifactRejected,
        FsspecArtifactStore,
        fetch_trusted,
    )
    from driftline.services.runtime.reader import TopicMissing
    from driftline.services.runtime.signing import SignatureError, key_id

    topic = kafka.topics.models_registry
    try:
        snapshot = registry.read_snapshot(kafka, topic, timeout_s=timeout_s)
    except TopicMissing:
        return [
            Finding("registry", topic, FAIL, "not read: the topic is missing", topics_create(kafka))
        ]
    except Exception as exc:  # a broker error or a read that stalls (TimeoutError)
        return [Finding("registry", topic, FAIL, f"not read: {exc}", "check the brokers and ACLs")]
    findings = []
    if public_key is not None:
        try:
            key_id(public_key)
        except (OSError, ValueError, SignatureError) as exc:
            findings.append(
                Finding(
                    "registry",
                    "public key",
                    FAIL,
                    f"cannot be read ({exc}); signatures were not checked",
                    "give --public-key or DRIFTLINE_PUBLIC_KEY as PEM text or a PEM file's path",
                )
            )
            public_key = None
    if snapshot.invalid:
        findings.append(
            Finding(
                "registry",
                topic,
                WARN,
                f"{snapshot.invalid} records are not model versions (every reader skips them)",
                "find who writes them: only the trainer and `driftline models` should",
            )
        )
    store = FsspecArtifactStore(artifact_root)
    for modality in modalities:
        name = MODEL_NAMES[modality]
        mv = snapshot.champions.get(name)
        if mv is None:
            action = (
                f"promote one with `driftline models promote VERSION --model {modality}`"
                if snapshot.versions.get(name)
                else f"run `driftline train --bootstrap --modality {modality}`"
            )
            findings.append(Finding("champion", name, FAIL, "the registry has none", action))
            continue
        what = f"v{mv.version}"
        if mv.modality != modality:
            findings.append(
                Finding("champion", name, FAIL, f"{what} is a {mv.modality} model", "roll back")
            )
            continue
        try:
            data = fetch_trusted(store, mv, public_key)
        except ArtifactRejected as exc:
            hints = {
                REJECT_FETCH: f"make {mv.artifact_uri} readable from here (the trainer writes "
                f"under {artifact_root}, DRIFTLINE_ARTIFACT_ROOT)",
                REJECT_DIGEST: "the file changed after it was published: publish it again",
            }
            hint = hints.get(exc.reason, "check DRIFTLINE_PUBLIC_KEY against the trainer's key")
            findings.append(
                Finding(
                    "champion",
                    name,
                    FAIL,
                    f"{what} is refused ({exc.reason}): {exc}",
                    f"{hint}, or `driftline models rollback --model {modality}`",
                )
            )
            continue
        signed = "signature verified" if public_key else "signature not checked (no public key)"
        findings.append(
            Finding(
                "champion",
                name,
                OK,
                f"{what} fetched ({len(data)} bytes), sha256 matches, {signed}",
            )
        )
    return findings


def _redacted(url: str) -> str:
    """scheme://host:port/path of a URL, without the credentials or query it may carry."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    if not netloc:  # unix:///path/to/socket
        return f"{parts.scheme}://{parts.path}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_redis(url: str, timeout_s: float = REDIS_TIMEOUT_S) -> Finding:
    """The feature store answers PING (with the URL's credentials)."""
    import redis

    where = _redacted(url)
    start = time.monotonic()
    try:
        client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        try:
            client.ping()
            try:
                version = f"redis {client.info('server')['redis_version']}, "
            except redis.RedisError:  # an ACL user may not run INFO; PING is what matters
                version = ""
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        waited = time.monotonic() - start
        return Finding(
            "redis",
            where,
            FAIL,
            f"unreachable after {waited:.1f} s: {exc}",
            "is Redis running? `driftline stack up` starts a local one; --redis-url or "
            "DRIFTLINE_REDIS_URL points elsewhere (with the features user's password)",
        )
    return Finding("redis", where, OK, f"{version}answered in {time.monotonic() - start:.2f} s")


def readyz_url(url: str) -> str:
    """A service's /readyz: the URL as given, or /readyz on its host when no path is given."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit((parts.scheme, parts.netloc, "/readyz", parts.query, ""))
    return url


def check_service(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> Finding:
    """A service's /readyz answers 200."""
    probe = readyz_url(url)
    where = _redacted(probe)
    try:
        with urllib.request.urlopen(probe, timeout=timeout_s) as resp:
            code = resp.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return Finding(
            "service",
            where,
            FAIL,
            f"unreachable: {reason}",
            "is the service running with --metrics-port on that port?",
        )
    if code == 200:
        return Finding("service", where, OK, "ready")
    return Finding(
        "service",
        where,
        FAIL,
        f"not ready (HTTP {code})",
        "see its logs and /metrics: it may have no model, no broker or no Redis",
    )
