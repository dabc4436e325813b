"""`driftline train`: train and publish model versions."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from services.commands.args import add_kafka_flags, settings_from


def run(args: argparse.Namespace) -> int:
    if not args.bootstrap:
        print(
            "driftline train: only --bootstrap is available so far "
            "(retraining on labelled windows comes with the trainer service)",
            file=sys.stderr,
        )
        return 2
    from schemas.contracts import MODEL_NAMES
    from services.demo import bootstrap_sensor_model
    from services.runtime import registry
    from services.runtime.settings import TrainerSettings

    settings = settings_from(TrainerSettings, args, ["epochs", "seed", "artifact_root", "device"])
    if args.if_missing:
        snapshot = registry.read_snapshot(settings.kafka, settings.kafka.topics.models_registry)
        current = snapshot.champions.get(MODEL_NAMES["sensor"])
        if current is not None:
            print(f"{current.name} v{current.version} already serves; nothing to bootstrap")
            return 0
    mv = bootstrap_sensor_model(settings, windows=args.windows)
    print(
        f"published {mv.name} v{mv.version} ({mv.status}): "
        f"holdout accuracy {mv.metrics['holdout_accuracy']:.3f}, "
        f"macro-F1 {mv.metrics['holdout_macro_f1']:.3f}, artifact {mv.artifact_uri}"
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train and publish model versions")
    p.add_argument(
        "--bootstrap", action="store_true", help="train the first sensor model on simulated data"
    )
    p.add_argument(
        "--if-missing", action="store_true", help="only when the registry has no champion yet"
    )
    p.add_argument("--windows", type=int, default=8000, help="simulated windows (default 8000)")
    p.add_argument("--epochs", type=int, help="training epochs (default 8)")
    p.add_argument("--seed", type=int, help="random seed (default 7)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="torch device (auto)")
    p.add_argument(
        "--artifact-root", help="fsspec URI for artifacts (default .driftline/artifacts)"
    )
    add_kafka_flags(p)
    p.set_defaults(func=run)
