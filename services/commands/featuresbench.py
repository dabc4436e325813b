"""The features bench's flags and runner, shared by `driftline bench features` and its alias
`driftline features bench`.

A module of its own so that `driftline features` (in the services image, which has no torch)
does not import the other benches, among them the trainer's.
"""

from __future__ import annotations

import argparse

from driftline.services.commands.args import add_kafka_flags, add_redis_flags


def run_features_bench(args: argparse.Namespace) -> int:
    """`driftline bench features` (and its alias `driftline features bench`)."""
    from pathlib import Path

    from driftline.services.commands.features import features_settings

    settings = features_settings(args)
    if args.late_labels:
        from driftline.services.bench import latelabels

        return latelabels.main(settings, assets=args.late_assets)
    from driftline.services.bench import features

    return features.main(
        settings,
        reads=args.reads,
        assets=args.assets,
        events=args.events,
        app_events=args.app_events,
        app_workers=args.app_workers,
        join_events=args.join_events,
        inference_per_s=args.inference_rate,
        json_path=Path(args.json) if args.json else None,
    )


def add_features_bench_flags(p: argparse.ArgumentParser) -> None:
    """The flags of the features bench, shared with its alias `driftline features bench`."""
    p.add_argument("--reads", type=int, default=10_000, help="reads timed (default 10000)")
    p.add_argument("--assets", type=int, default=500, help="assets populated (default 500)")
    p.add_argument("--events", type=int, default=200_000, help="results for the stats path")
    p.add_argument(
        "--app-events", type=int, default=50_000, help="results through the faust app (0: skip)"
    )
    p.add_argument("--app-workers", type=int, default=1, help="stats workers started (1)")
    p.add_argument(
        "--join-events",
        type=int,
        default=20_000,
        help="of those results, how many the join worker is timed over (default 20000; 0: skip)",
    )
    p.add_argument(
        "--inference-rate",
        type=float,
        help="the inference consumer's at-least-once results/s to compare with (default: the "
        "newest `driftline bench inference --modality sensor` report under .driftline/bench)",
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument(
        "--late-labels",
        action="store_true",
        help="instead: the join over a simulated week, labels 1-7 days late (in process)",
    )
    p.add_argument("--late-assets", type=int, default=10, help="assets of the late-label run")
    add_redis_flags(p)
    add_kafka_flags(p)
