"""`driftline features [get ASSET | rebuild | bench]`: the feature store app and its tools."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from driftline.services.commands.args import (
    add_kafka_flags,
    add_log_flags,
    add_redis_flags,
    settings_from,
)
from driftline.services.commands.featuresbench import add_features_bench_flags, run_features_bench

SETTING_FLAGS = ["metrics_port", "role", "redis_key_prefix"]


def features_settings(args: argparse.Namespace) -> Any:
    """FeaturesSettings from the environment, then the flags given."""
    from pydantic import SecretStr

    from driftline.services.features.settings import FeaturesSettings

    settings = settings_from(FeaturesSettings, args, SETTING_FLAGS)
    if getattr(args, "redis_url", None):
        settings = settings.model_copy(update={"redis_url": SecretStr(args.redis_url)})
    return settings


def run_app(args: argparse.Namespace) -> int:
    from driftline.services.features import service
    from driftline.services.runtime import logs

    settings = features_settings(args)
    logs.configure(settings.log_level, settings.log_format, settings.service_name)
    service.run(settings)
    return 0


def get(args: argparse.Namespace) -> int:
    import redis

    from driftline.services.features.reader import format_asset, read_asset

    settings = features_settings(args)
    # A short connect timeout: an unreachable Redis is reported in seconds, not minutes.
    client = redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_timeout=5, socket_connect_timeout=3
    )
    try:
        features = read_asset(client, settings.redis_key_prefix, args.asset)
    except redis.RedisError as exc:
        print(f"driftline features get: cannot read Redis: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if args.json:
        out = {
            "asset_id": features.asset_id,
            "versions": [
                {
                    "model": model,
                    "version": version,
                    "windows": windows,
                    "accuracy": _accuracy_json(features.accuracy.get((model, version))),
                    "drift": features.drift.get((model, version)),
                }
                for (model, version), windows in sorted(features.windows.items())
            ],
        }
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        sys.stdout.write(format_asset(features))
    return 0 if not features.empty else 2


def _accuracy_json(view: Any) -> dict[str, Any] | None:
    """Live accuracy by event time: the figure shown, and every bucket read (newest first)."""
    if view is None:
        return None
    snap = view.snapshot()
    return {
        "bucket_ms": view.bucket_ms,
        "min_labels": view.min_labels,
        "calibration": view.calibration,
        "live": None if snap is None else {k: getattr(snap, k) for k in snap.__dataclass_fields__},
        "buckets": view.rows(),
    }


def rebuild(args: argparse.Namespace) -> int:
    from driftline.services.features.rebuild import rebuild as replay

    settings = features_settings(args)
    report = replay(settings, fresh=args.fresh)
    print(
        f"rebuilt from {report.results:,} results and {report.labelled_windows:,} labelled "
        f"windows in {report.seconds:.1f}s"
    )
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    add_redis_flags(p)
    add_kafka_flags(p)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "features",
        help="feature store app: window statistics, label join, live accuracy, drift",
        description="Without an action, run the faust app: windowed confidence statistics per "
        "asset and model version into Redis, the label join to training.windows (unknown or "
        "expired labels to feedback.labels.dlq), live accuracy and drift signals.",
    )
    _common(p)
    p.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz here")
    p.add_argument("--role", choices=["all", "stats", "join"], help="what this worker runs")
    add_log_flags(p)
    p.set_defaults(func=run_app)
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    g = actions.add_parser("get", help="print an asset's features from Redis")
    g.add_argument("asset", metavar="ASSET", help="asset id, e.g. insulator-00001")
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(g)
    g.set_defaults(func=get)

    r = actions.add_parser("rebuild", help="replay Kafka into Redis (converges to the same state)")
    r.add_argument("--fresh", action="store_true", help="delete every key under the prefix first")
    _common(r)
    r.set_defaults(func=rebuild)

    b = actions.add_parser(
        "bench",
        help="same as `driftline bench features` (its home): read latency, stats throughput",
        description="An alias: `driftline bench features` is the home of this bench and takes "
        "the same flags.",
    )
    add_features_bench_flags(b)
    b.set_defaults(func=run_features_bench)
