"""`driftline models`: read the model registry."""

from __future__ import annotations

import argparse
from typing import Any

from services.commands.args import add_kafka_flags, settings_from


def run(args: argparse.Namespace) -> int:
    from services.runtime import registry
    from services.runtime.settings import DriftlineSettings

    settings = settings_from(DriftlineSettings, args)
    snapshot = registry.read_snapshot(settings.kafka, settings.kafka.topics.models_registry)
    if not snapshot.versions:
        print("no model versions yet; run `driftline train --bootstrap`")
        return 0
    print(f"{'model':20} {'version':>7}  {'status':10} {'serving':7} {'macro-F1':>8}  artifact")
    for name, versions in sorted(snapshot.versions.items()):
        champion = snapshot.champions.get(name)
        for v, mv in sorted(versions.items()):
            serving = "yes" if champion is not None and champion.version == v else ""
            f1 = mv.metrics.get("holdout_macro_f1")
            f1_text = f"{f1:8.3f}" if f1 is not None else f"{'-':>8}"
            print(f"{name:20} {v:7d}  {mv.status:10} {serving:7} {f1_text}  {mv.artifact_uri}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="show the model registry")
    p.add_argument("action", choices=["list"])
    add_kafka_flags(p)
    p.set_defaults(func=run)
