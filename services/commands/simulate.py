"""`driftline simulate`: a synthetic insulator fleet's events, labels and drift."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from driftline.services.commands.args import (
    add_kafka_flags,
    fraction,
    non_negative_float,
    positive_int,
    settings_from,
)
from driftline.services.commands.preflight import check_kafka

FIELDS = [
    "assets",
    "rate",
    "image_rate",
    "count",
    "seed",
    "fault_fraction",
    "label_fraction",
    "label_delay_min_s",
    "label_delay_max_s",
    "scenario",
    "drift_at_s",
    "evolve_per_s",
    "image_format",
]


def run(args: argparse.Namespace) -> int:
    from driftline.services.runtime.shutdown import StopFlag
    from driftline.services.simulator import sensors
    from driftline.services.simulator.scenario import ScenarioError
    from driftline.services.simulator.settings import SimulatorSettings

    if args.source == "images":
        args.rate = 0.0
        args.image_rate = args.image_rate or 20.0
    elif args.source == "sensors" and args.image_rate is None:
        args.image_rate = 0.0
    elif args.source == "fleet":
        args.image_rate = 20.0 if args.image_rate is None else args.image_rate
    if args.label_delay:
        args.label_delay_min_s, args.label_delay_max_s = args.label_delay
    try:
        settings = settings_from(SimulatorSettings, args, FIELDS)
        check_kafka(settings.kafka)
        sensors.run(settings, stop=StopFlag().install())
    except ScenarioError as exc:
        print(f"driftline simulate: {exc}", file=sys.stderr)
        return 2
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="publish a synthetic insulator fleet's events",
        description="A fleet of insulators (healthy, contaminated, cracked, flashover-damaged) "
        "publishes sensor windows and/or inspection photos at constant rates; a share of events "
        "is labelled after a delay on feedback.labels; a drift scenario moves the world.",
        epilog="examples:\n"
        "  driftline simulate sensors --rate 500 --count 10000\n"
        "  driftline simulate images --image-rate 20\n"
        "  driftline simulate fleet --label-fraction 0.3 --scenario aging --drift-at 60\n"
        "  driftline simulate fleet --scenario my-scenario.toml   (see simulator/scenario.py)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", choices=["sensors", "images", "fleet"], help="what to publish")
    p.add_argument("--assets", type=positive_int, help="insulators in the fleet (default 50)")
    p.add_argument(
        "--rate", type=non_negative_float, help="sensor windows per second (default 200)"
    )
    p.add_argument(
        "--image-rate", type=non_negative_float, help="photos per second (images/fleet: 20)"
    )
    p.add_argument(
        "--count", type=positive_int, help="stop after this many events (default: run on)"
    )
    p.add_argument("--seed", type=int, help="random seed (default 7)")
    p.add_argument("--fault-fraction", type=fraction, help="share of faulty insulators (0.4)")
    p.add_argument("--label-fraction", type=fraction, help="share of events labelled (0)")
    p.add_argument(
        "--label-delay",
        type=non_negative_float,
        nargs=2,
        metavar=("MIN_S", "MAX_S"),
        help="labels arrive this long after their event (default 2 10)",
    )
    p.add_argument("--scenario", help="drift scenario: steady, aging, or a TOML file")
    p.add_argument(
        "--drift-at", dest="drift_at_s", type=non_negative_float, help="move the drift to T s"
    )
    p.add_argument(
        "--evolve", dest="evolve_per_s", type=float, help="simulated hours of ageing per second"
    )
    p.add_argument("--image-format", choices=["jpeg", "png"], help="photo encoding (jpeg)")
    add_kafka_flags(p)
    p.set_defaults(func=run, label_delay=None)
