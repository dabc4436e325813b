"""Shared argument handling: flags that override settings read from the environment."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The flags that were given on the command line; the rest fall back to env and defaults."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def settings_from(cls: type[S], args: argparse.Namespace, names: Sequence[str] = ()) -> S:
    """Settings from the environment, then the given flags, including the Kafka flags."""
    settings = cls(**given(args, names))
    kafka_changes = given(args, ["bootstrap_servers", "topic_prefix"])
    if kafka_changes and hasattr(settings, "kafka"):
        kafka = settings.kafka.model_copy(update=kafka_changes)
        settings = settings.model_copy(update={"kafka": kafka})
    return settings


def add_kafka_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default 127.0.0.1:9092)")
    p.add_argument("--topic-prefix", help="prefix of every topic name, to share a cluster")


def add_redis_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", help="Redis URL (default redis://127.0.0.1:6379/0)")
    p.add_argument("--redis-key-prefix", help="prefix of every Redis key (default driftline:)")
