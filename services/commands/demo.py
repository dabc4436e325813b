"""`driftline demo`: the drift-recovery loop on the local stack, watched live, then reported."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace) -> int:
    from driftline.services import localstack
    from driftline.services.demo import run as drift_demo
    from driftline.services.demo.config import DemoConfig
    from driftline.services.demo.report import RECOVERY_GOAL
    from driftline.services.simulator.scenario import ScenarioError

    cfg = DemoConfig(
        scenario=args.scenario,
        drift_at_s=args.drift_at,
        duration_s=args.duration,
        rate=args.rate,
        image_rate=args.image_rate,
        images=not args.no_images,
        assets=args.assets,
        label_fraction=args.label_fraction,
        min_new_labels=args.min_new_labels,
        out_dir=Path(args.out) if args.out else None,
    )
    if cfg.drift_at_s >= cfg.duration_s:
        print("driftline demo: --drift-at must come before the end (--duration)", file=sys.stderr)
        return 2

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.bootstrap_servers:
        bootstrap, redis_url = args.bootstrap_servers, args.redis_url or "redis://127.0.0.1:6379/0"
    else:
        stack = localstack.LocalStack(
            localstack.default_data_dir(), localstack.StackPorts.from_env()
        )
        status = stack.up()
        bootstrap, redis_url = status.bootstrap_servers, status.redis_url
    say(f"kafka {bootstrap}   redis {redis_url}")
    try:
        summary = drift_demo.run(cfg, bootstrap, redis_url, say, live=not args.quiet)
    except ScenarioError as exc:
        print(f"driftline demo: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"driftline demo: {exc}", file=sys.stderr)
        return 1
    print(
        f"\n{summary.sent:,} events sent, {summary.scored:,} scored, lost {summary.lost}, "
        f"duplicated {summary.duplicated}"
    )
    for f in summary.figures:
        back = (
            f"back at {RECOVERY_GOAL:.0%} of before {f.recovered_after_s:.0f} s after the drift, "
            f"after {f.swaps_until_recovery} new version(s)"
            if f.recovered_after_s is not None
            else "not back at the goal"
        )
        print(
            f"{f.modality:6}  accuracy before drift {f.pre_drift:.3f}, "
            f"worst after {f.worst_after_drift:.3f}, at the end {f.recovered:.3f} "
            f"({f.recovered_ratio:.0%} of before); {back}"
        )
    print("the stack keeps running; `driftline stack down` stops it")
    ok = summary.lost == 0 and summary.duplicated == 0
    return 0 if ok else 1


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the drift-recovery loop on the local stack, live, with a report (Ctrl-C ends it)",
        description="Starts the local stack, then every service as its own process: inference "
        "for both modalities (exactly-once), features, the trainer and alerts. The simulator "
        "sends sensor windows and photos of a fleet, labels a share of them after a delay, and "
        "drifts the world at --drift-at. A live view shows throughput, versions, accuracy, "
        "drift and retraining; at the end (or Ctrl-C) a PNG of accuracy over time per model "
        "version and a markdown summary are written under .driftline/reports/.",
    )
    p.add_argument("--scenario", default="aging", help="steady, aging, or a TOML file (aging)")
    p.add_argument("--drift-at", type=float, default=120.0, help="seconds until the drift (120)")
    p.add_argument("--duration", type=float, default=360.0, help="seconds in all (360)")
    p.add_argument("--rate", type=float, default=100.0, help="sensor windows per second (100)")
    p.add_argument("--image-rate", type=float, default=10.0, help="photos per second (10)")
    p.add_argument("--no-images", action="store_true", help="sensors only (lighter)")
    p.add_argument("--assets", type=int, default=50, help="insulators (50)")
    p.add_argument("--label-fraction", type=float, default=0.5, help="share labelled (0.5)")
    p.add_argument(
        "--min-new-labels",
        type=int,
        default=3000,
        help="besides the drift response, retrain after this many new labels (3000)",
    )
    p.add_argument("--out", help="report folder (default .driftline/reports/<run>)")
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.add_argument("--bootstrap-servers", help="use this Kafka instead of the local stack")
    p.add_argument("--redis-url", help="with --bootstrap-servers: the Redis to use")
    p.set_defaults(func=run)
