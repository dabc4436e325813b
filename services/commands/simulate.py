"""`driftline simulate`: synthetic insulator events."""

from __future__ import annotations

import argparse
from typing import Any

from services.commands.args import add_kafka_flags, settings_from


def run(args: argparse.Namespace) -> int:
    from services.runtime.settings import SimulatorSettings
    from services.runtime.shutdown import StopFlag
    from services.simulator import sensors

    settings = settings_from(
        SimulatorSettings, args, ["assets", "rate", "count", "seed", "fault_fraction"]
    )
    sensors.run(settings, stop=StopFlag().install())
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("simulate", help="publish synthetic insulator events")
    p.add_argument("source", choices=["sensors"], help="what to simulate")
    p.add_argument("--assets", type=int, help="insulators in the fleet (default 50)")
    p.add_argument("--rate", type=float, help="windows per second for the fleet (default 200)")
    p.add_argument("--count", type=int, help="stop after this many windows (default: run on)")
    p.add_argument("--seed", type=int, help="random seed (default 7)")
    p.add_argument("--fault-fraction", type=float, help="share of faulty insulators (0.4)")
    add_kafka_flags(p)
    p.set_defaults(func=run)
