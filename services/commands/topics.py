"""`driftline topics`: create every topic of the table."""

from __future__ import annotations

import argparse
from typing import Any

from services.commands.args import add_kafka_flags, settings_from


def run(args: argparse.Namespace) -> int:
    from services.runtime.kafka import create_topics
    from services.runtime.settings import DriftlineSettings

    settings = settings_from(DriftlineSettings, args)
    created, existing = create_topics(settings.kafka, partitions=args.partitions)
    for name in created:
        print(f"created  {name}")
    for name in existing:
        print(f"exists   {name}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "topics",
        help="create every driftline topic (idempotent)",
        description="Create every topic of the topic table and its dead-letter topics. Existing "
        "topics are left alone; models.registry is compacted.",
    )
    p.add_argument("action", choices=["create"])
    p.add_argument("--partitions", type=int, help="override every topic's partition count")
    add_kafka_flags(p)
    p.set_defaults(func=run)
