"""`driftline dlq`: read dead letters and replay them after a fix."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from driftline.services.commands.args import add_kafka_flags, positive_int, settings_from
from driftline.services.commands.preflight import check_kafka


def _when(ms: int) -> str:
    if ms < 0:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _preview(value: bytes | None, width: int = 32) -> str:
    if value is None:
        return "<tombstone>"
    text = value[:width].decode("utf-8", "replace")
    printable = "".join(c if c.isprintable() else "." for c in text)
    return f"{len(value)} B {printable!r}"


def run(args: argparse.Namespace) -> int:
    from driftline.services.runtime.reader import TopicMissing
    from driftline.services.runtime.settings import DriftlineSettings

    settings = settings_from(DriftlineSettings, args)
    check_kafka(settings.kafka)
    try:
        return _run(args, settings)
    except TopicMissing as exc:
        print(
            f"driftline dlq: {exc}{_known_hint(settings.kafka.topic_prefix, args.topic)}",
            file=sys.stderr,
        )
        return 1


def _known_hint(prefix: str, topic: str) -> str:
    """For a topic that is not one of the table's: the topics that have dead letters."""
    from driftline.schemas.topics import ALERTS, DLQ_SOURCES, DLQ_SUFFIX

    sources = (*DLQ_SOURCES, ALERTS)
    base = topic.removeprefix(prefix).removesuffix(DLQ_SUFFIX)
    if base in sources:
        return ""
    return f"\n  {base!r} is not a driftline topic; dead letters are kept for: " + ", ".join(
        sources
    )


def _run(args: argparse.Namespace, settings: Any) -> int:
    from driftline.services.runtime import deadletters

    reasons = set(args.reason or [])
    if args.action == "inspect":
        letters = [
            x
            for x in deadletters.inspect(settings.kafka, args.topic)
            if not reasons or x.envelope.error_class in reasons
        ]
        if args.json:
            for x in letters[-args.limit :]:
                e = x.envelope
                print(
                    json.dumps(
                        {
                            "dlq_offset": f"{x.dlq_partition}:{x.dlq_offset}",
                            "source": f"{e.source_topic}[{e.source_partition}]@{e.source_offset}",
                            "reason": e.error_class,
                            "message": e.error_message,
                            "service": e.service,
                            "failed_at": _when(e.failed_time_ms),
                            "key": e.key.decode("utf-8", "replace") if e.key else None,
                            "value_bytes": None if e.value is None else len(e.value),
                            "content_type": x.content_type,
                        }
                    )
                )
            return 0
        counts: dict[str, int] = {}
        for x in letters:
            counts[x.envelope.error_class] = counts.get(x.envelope.error_class, 0) + 1
        name = deadletters.dlq_topic_name(settings.kafka, args.topic)
        print(f"{len(letters)} dead letters on {name}")
        for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            print(f"  {n:6}  {reason}")
        if letters:
            print()
        for x in letters[-args.limit :]:
            e = x.envelope
            print(
                f"{_when(e.failed_time_ms)}  {e.error_class:22} "
                f"{e.source_topic}[{e.source_partition}]@{e.source_offset}  by {e.service}"
            )
            print(f"    {e.error_message}")
            key = e.key.decode("utf-8", "replace") if e.key else "-"
            print(f"    key {key}  value {_preview(e.value)}  content-type {x.content_type}")
        return 0
    report = deadletters.replay(
        settings.kafka,
        args.topic,
        accept=lambda x: not reasons or x.envelope.error_class in reasons,
        dry_run=args.dry_run,
        from_start=args.from_start,
    )
    verb = "would replay" if args.dry_run else "replayed"
    targets = ", ".join(f"{n} to {t}" for t, n in sorted(report.by_topic.items())) or "nothing"
    print(f"{verb} {report.replayed} ({targets}); skipped {report.skipped}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dlq",
        help="inspect dead letters, or replay them after a fix",
        description="Dead letters keep the original key, bytes and headers; the reason, the "
        "source topic/partition/offset, the service and the time travel as headers. `inspect` "
        "summarises and lists them; `replay` sends them back to their source topic, once: "
        "progress is committed as the consumer group driftline-dlq-replay.",
    )
    p.add_argument("action", choices=["inspect", "replay"])
    p.add_argument("topic", help="source topic or its DLQ, e.g. sensor.windows")
    p.add_argument(
        "--reason", action="append", help="only this reason (repeatable), e.g. non_finite"
    )
    p.add_argument("--limit", type=positive_int, default=20, help="inspect: newest N letters (20)")
    p.add_argument("--json", action="store_true", help="inspect: one JSON object per line")
    p.add_argument("--dry-run", action="store_true", help="replay: count, send nothing")
    p.add_argument(
        "--from-start", action="store_true", help="replay: ignore earlier replays' progress"
    )
    add_kafka_flags(p)
    p.set_defaults(func=run)
