"""Shared argument handling: flags that override settings read from the environment."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)
LOG_FLAGS = ["log_level", "log_format"]


def given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The flags that were given on the command line; the rest fall back to env and defaults."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def settings_from(cls: type[S], args: argparse.Namespace, names: Sequence[str] = ()) -> S:
    """Settings from the environment, then the given flags, including the Kafka flags."""
    settings = cls(**given(args, [*names, *LOG_FLAGS]))
    kafka_changes = given(args, ["bootstrap_servers", "topic_prefix"])
    if kafka_changes and hasattr(settings, "kafka"):
        kafka = settings.kafka.model_copy(update=kafka_changes)
        settings = settings.model_copy(update={"kafka": kafka})
    return settings


def add_kafka_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default 127.0.0.1:9092)")
    p.add_argument("--topic-prefix", help="prefix of every topic name, to share a cluster")


def add_log_flags(p: argparse.ArgumentParser) -> None:
    """--log-level and --log-format, for the commands that run a service."""
    from driftline.services.runtime.settings import LOG_FORMATS, LOG_LEVELS

    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="least severe level logged (default INFO; env DRIFTLINE_LOG_LEVEL)",
    )
    p.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        help="text (default) for a terminal; json for log pipelines: one object per line with "
        "time (UTC), level, service, logger, message and the record's fields "
        "(env DRIFTLINE_LOG_FORMAT)",
    )


def add_redis_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url", type=redis_url, help="Redis URL (default redis://127.0.0.1:6379/0)"
    )
    p.add_argument("--redis-key-prefix", help="prefix of every Redis key (default driftline:)")


# Argument types: a typo is refused by argparse (exit 2, usage line) before any setting is
# built or any broker contacted. The settings' own bounds remain the net for env vars.


def positive_int(text: str) -> int:
    """An int >= 1."""
    value = _number(int, text, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {text})")
    return value


def non_negative_int(text: str) -> int:
    """An int >= 0."""
    value = _number(int, text, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return value


def non_negative_float(text: str) -> float:
    """A finite float >= 0."""
    value = _number(float, text, "a number")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (got {text})")
    return value


def fraction(text: str) -> float:
    """A float in [0, 1]."""
    value = _number(float, text, "a number")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (got {text})")
    return value


def port(text: str) -> int:
    """A TCP port number, 0..65535."""
    value = _number(int, text, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 0 and 65535 (got {text})")
    return value


REDIS_SCHEMES = ("redis", "rediss", "unix")


def redis_url(text: str) -> str:
    """A redis://, rediss:// or unix:// URL; never echoed, since it may hold a password."""
    scheme, sep, _ = text.partition("://")
    if not sep or scheme.lower() not in REDIS_SCHEMES:
        raise argparse.ArgumentTypeError(
            "must be a redis://host:port/db, rediss://... or unix://... URL"
        )
    return text


def http_url(text: str) -> str:
    """An http(s)://host/... URL; the value is never echoed, since it may hold a token."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError("must be an http(s)://host/... URL")
    return text


N = TypeVar("N", int, float)


def _number(kind: type[N], text: str, what: str) -> N:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what} (got {text!r})") from None
