"""`driftline topics`: create every topic of the table."""

from __future__ import annotations

import argparse
from typing import Any

from driftline.services.commands.args import add_kafka_flags, positive_int, settings_from


def run(args: argparse.Namespace) -> int:
    from driftline.services.runtime.kafka import create_topics
    from driftline.services.runtime.settings import DriftlineSettings

    settings = settings_from(DriftlineSettings, args)
    label_ms = args.label_retention_s * 1000 if args.label_retention_s else None
    created, existing = create_topics(
        settings.kafka, partitions=args.partitions, label_retention_ms=label_ms
    )
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
    p.add_argument("--partitions", type=positive_int, help="override every topic's partition count")
    p.add_argument(
        "--label-retention-s",
        type=positive_int,
        help="how late labels may come (the features app's DRIFTLINE_JOIN_RETENTION_S): the "
        "input topics keep records that long plus 2 days (default: 30 days)",
    )
    add_kafka_flags(p)
    p.set_defaults(func=run)
