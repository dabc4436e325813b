"""`driftline topics`: create every topic of the table."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from driftline.services.commands.args import add_kafka_flags, positive_int, settings_from


def run(args: argparse.Namespace) -> int:
    from driftline.services.runtime.kafka import create_topics
    from driftline.services.runtime.settings import DriftlineSettings

    settings = settings_from(DriftlineSettings, args)
    kafka = settings.kafka
    given = {
        "replication_factor": args.replication_factor,
        "min_insync_replicas": args.min_insync_replicas,
    }
    if any(v is not None for v in given.values()):
        kafka = kafka.model_copy(update={k: v for k, v in given.items() if v is not None})
    label_ms = args.label_retention_s * 1000 if args.label_retention_s else None
    try:
        created, existing = create_topics(
            kafka, partitions=args.partitions, label_retention_ms=label_ms
        )
    except ValueError as exc:
        print(f"driftline topics: {exc}", file=sys.stderr)
        return 2
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
        "topics are left alone; models.registry is compacted. On a cluster of three brokers "
        "or more, topics get 3 replicas and min.insync.replicas 2 (with acks=all producers, "
        "any one broker may fail without losing an acknowledged record); on one broker, 1 "
        "and 1.",
    )
    p.add_argument("action", choices=["create"])
    p.add_argument("--partitions", type=positive_int, help="override every topic's partition count")
    p.add_argument(
        "--label-retention-s",
        type=positive_int,
        help="how late labels may come (the features app's DRIFTLINE_JOIN_RETENTION_S): the "
        "input topics keep records that long plus 2 days (default: 30 days)",
    )
    p.add_argument(
        "--replication-factor",
        type=positive_int,
        metavar="N",
        help="replicas per partition (DRIFTLINE_KAFKA__REPLICATION_FACTOR; default 3 on three "
        "or more brokers, else 1)",
    )
    p.add_argument(
        "--min-insync-replicas",
        type=positive_int,
        metavar="N",
        help="replicas that must have a write before acks=all succeeds "
        "(DRIFTLINE_KAFKA__MIN_INSYNC_REPLICAS; default 2 with 3 replicas or more, else 1)",
    )
    add_kafka_flags(p)
    p.set_defaults(func=run)
