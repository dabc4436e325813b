"""`driftline bench TARGET`: measure a part of driftline on this machine.

Each target is its own module in services.bench and registers its flags here; this module
only dispatches.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from driftline.services.commands.args import add_kafka_flags, settings_from
from driftline.services.commands.featuresbench import add_features_bench_flags, run_features_bench


def _trainer(args: argparse.Namespace) -> int:
    from driftline.services.bench import trainer
    from driftline.trainer.settings import TrainerSettings

    settings = settings_from(TrainerSettings, args, ["epochs", "device", "seed"])
    return trainer.main(
        settings,
        sensor_windows=args.sensor_windows,
        images=args.images,
        stream_events=args.stream_events,
        use_kafka=not args.no_kafka,
        json_path=args.json,
    )


def _add_trainer(targets: Any) -> None:
    p = targets.add_parser(
        "trainer",
        help="retraining time, export+check+publish time, inference throughput during training",
    )
    p.add_argument("--sensor-windows", type=int, default=10_000, help="default 10000")
    p.add_argument("--images", type=int, default=2_000, help="default 2000")
    p.add_argument("--epochs", type=int, help="training epochs (default 8)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="torch device (auto)")
    p.add_argument("--seed", type=int, help="random seed (default 7)")
    p.add_argument(
        "--stream-events", type=int, default=50_000, help="backlog the consumer scores (50000)"
    )
    p.add_argument(
        "--no-kafka", action="store_true", help="skip the throughput part and the Kafka publish"
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    add_kafka_flags(p)
    p.set_defaults(target=_trainer)


def _add_features(targets: Any) -> None:
    p = targets.add_parser(
        "features",
        help="read latency of one asset's features; stats throughput; late labels",
        description="Reads of one asset's features from Redis, the statistics path in process, "
        "and the faust app (--role stats) over results preloaded on a topic set of its own; "
        "with --late-labels instead, the label join over a simulated week (in process). "
        "`driftline features bench` is an alias.",
    )
    add_features_bench_flags(p)
    p.set_defaults(target=run_features_bench)


def _inference(args: argparse.Namespace) -> int:
    from pathlib import Path

    from driftline.services.bench import inference

    modalities = ["sensor", "image"] if args.modality == "both" else [args.modality]
    for modality in modalities:
        events = args.events or (40_000 if modality == "sensor" else 4_000)
        naive = args.naive_events or min(events, 2_000 if modality == "sensor" else 500)
        if args.latency_at:
            report = inference.latency_only(
                modality,
                min(events, 2_000),
                args.partitions,
                args.bootstrap_servers,
                args.latency_at,
                args.latency_seconds,
                Path(args.json) if args.json else None,
                say=lambda line: print(f"bench: {line}", file=sys.stderr),
            )
            inference.print_latency(report)
            continue
        report = inference.run(
            modality,
            events,
            naive,
            args.partitions,
            args.bootstrap_servers,
            Path(args.json) if args.json else None,
            say=lambda line: print(f"bench: {line}", file=sys.stderr),
        )
        inference.print_table(report)
    return 0


def _add_inference(targets: Any) -> None:
    p = targets.add_parser(
        "inference",
        help="scoring throughput against its limits, latency, hot swap, memory over swaps",
        description="Every row on the same preloaded events, model and partitions, each run "
        "alone: B0 (raw ONNX Runtime at its best batch), B1 (Kafka passthrough), their "
        "combined limit L, the hand-written loop a competent engineer would write (plain, and "
        "strict: flushing before each commit), the pipeline at-least-once and exactly-once, "
        "and a naive consumer. Then CPU per event and driftline's overhead beyond ONNX "
        "Runtime, p50/p99 latency at 10, 50 and 80%% of the pipeline's maximum with where the "
        "time goes and the load generator's own CPU, a hot swap under load, and resident "
        "memory over 50 swaps. Writes a JSON and a PNG (throughput bars, latency "
        "distributions). Runs on the local stack (started if needed) or on "
        "--bootstrap-servers, with topics of its own.",
    )
    p.add_argument("--modality", choices=["sensor", "image", "both"], default="sensor")
    p.add_argument("--events", type=int, help="events to preload (sensor 40000, image 4000)")
    p.add_argument("--naive-events", type=int, help="events for the naive consumer")
    p.add_argument("--partitions", type=int, default=3, help="partitions per topic (3)")
    p.add_argument("--bootstrap-servers", help="Kafka to use (default: the local stack)")
    p.add_argument("--json", help="report path (default .driftline/bench/inference-*.json)")
    p.add_argument(
        "--latency-at",
        type=float,
        action="append",
        metavar="RATE",
        help="only the latency part, at RATE events/s (repeat for several rates): p50/p99 "
        "and where the time goes, stage by stage",
    )
    p.add_argument(
        "--latency-seconds", type=float, default=10.0, help="how long each latency run sends (10)"
    )
    p.set_defaults(target=_inference)


def _join(args: argparse.Namespace) -> int:
    from driftline.services.bench import joinload
    from driftline.services.commands.features import features_settings

    settings = features_settings(args)
    r = joinload.join_throughput(settings, args.events, args.assets)
    print(
        f"  {r['what']}: {r['events_per_s']:,.0f} events/s ({r['records_per_s']:,.0f} "
        f"records/s routed and joined; {r['events']:,} windows with their results, "
        f"{r['labels']:,} labels, {r['seconds']:.1f} s; {r['cpu_us_per_record']:.0f} us of "
        "the worker's CPU per record)"
    )
    return 0


def _add_join(targets: Any) -> None:
    from driftline.services.commands.args import add_redis_flags

    p = targets.add_parser(
        "join",
        help="the label join's throughput: one join worker over a backlog",
        description="Preloads sensor windows, their results and labels for one in five, on a "
        "topic set of its own, starts one `driftline features --role join` worker and times "
        "it from its first join note to its last (every window and result routed and "
        "joined, every label's window emitted). Prints events/s, records/s and the worker's "
        "CPU per record. Uses the Kafka and Redis given (default: the local stack's).",
    )
    p.add_argument("--events", type=int, default=20_000, help="sensor windows (20000)")
    p.add_argument("--assets", type=int, default=500, help="assets they belong to (500)")
    add_redis_flags(p)
    add_kafka_flags(p)
    p.set_defaults(target=_join)


def _soak(args: argparse.Namespace) -> int:
    from pathlib import Path

    from driftline.services import localstack
    from driftline.services.bench import soak

    cfg = soak.SoakConfig(
        minutes=args.minutes,
        sensor_rate=args.sensor_rate,
        image_rate=args.image_rate,
        label_fraction=args.label_fraction,
        brokers=args.brokers,
        out_dir=Path(args.out) if args.out else None,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        bootstrap_servers=args.bootstrap_servers,
        redis_url=args.redis_url,
    )
    problem = soak.check(cfg)
    if problem:
        print(f"driftline bench soak: {problem}", file=sys.stderr)
        return 2
    try:
        return soak.run(cfg, soak.say_stderr)
    except (localstack.PrerequisiteMissing, localstack.StackStartError) as exc:
        print(f"driftline bench soak: the stack did not start: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"driftline bench soak: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("driftline bench soak: interrupted; services and stack stopped", file=sys.stderr)
        return 130


def _add_soak(targets: Any) -> None:
    p = targets.add_parser(
        "soak",
        help="every service on a 3-node cluster for minutes: memory, lag, p99, lost/duplicated",
        description="Starts a Kafka cluster (--brokers KRaft nodes; topics replicated 3 times "
        "with min ISR 2 on three) and Redis of its own on free ports, trains the first models, "
        "starts every service (inference for sensors and photos in exactly-once mode, a "
        "features stats worker and a join worker, the trainer, alerts) and streams labelled "
        "sensor windows and photos at steady rates. Every 10 s it samples each service's "
        "resident memory (VmRSS), each consumer group's lag and the p99 from event time to "
        "scored time of the results scored in those 10 s; at the end it counts results by "
        "event id with a read_committed reader. Writes soak.json (every series, the summary) "
        "and soak.png under --out, prints a table and a verdict (memory flat: growth after "
        "warm-up within max(10%, 50 MiB); lag bounded: at most 10 s of input at the end; 0 "
        "lost; 0 duplicated) and exits 0 only when it passes. The stack is stopped at the end. "
        "Not part of scripts/test: `scripts/soak` runs it (10 minutes by default).",
    )
    p.add_argument("--minutes", type=float, default=10.0, help="how long to stream (10)")
    p.add_argument(
        "--sensor-rate", type=float, default=500.0, help="sensor windows per second (500)"
    )
    p.add_argument("--image-rate", type=float, default=20.0, help="photos per second; 0: none (20)")
    p.add_argument(
        "--label-fraction", type=float, default=0.2, help="share of events labelled (0.2)"
    )
    p.add_argument("--brokers", type=int, default=3, help="Kafka nodes of the soak's stack (3)")
    p.add_argument("--out", help="report folder (default .driftline/reports/soak-<time>)")
    p.add_argument(
        "--data-dir",
        help="the stack's data dir, kept afterwards (default: a fresh one, removed at the end)",
    )
    p.add_argument(
        "--bootstrap-servers", help="use this running Kafka instead (no stack is started)"
    )
    p.add_argument("--redis-url", help="with --bootstrap-servers: the Redis to use")
    p.set_defaults(target=_soak)


def run(args: argparse.Namespace) -> int:
    code: int = args.target(args)
    return code


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmark a part of driftline on this machine")
    targets = p.add_subparsers(dest="bench_target", required=True, metavar="TARGET")
    _add_features(targets)
    _add_inference(targets)
    _add_join(targets)
    _add_trainer(targets)
    _add_soak(targets)
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run as `python -m services.commands.bench TARGET ...` too."""
    parser = argparse.ArgumentParser(prog="driftline")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
