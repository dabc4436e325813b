"""`driftline demo`: the whole path on the local stack, with live progress."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from services import demo

    return demo.main(rate=args.rate, assets=args.assets, metrics_port=args.metrics_port)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole path on the local stack, with live progress (Ctrl-C to stop)",
        description="Start the local stack, create topics, bootstrap a model if the registry has "
        "none, then run the simulator and the sensor inference consumer and show progress.",
    )
    p.add_argument("--rate", type=float, default=200.0, help="windows per second (default 200)")
    p.add_argument("--assets", type=int, default=50, help="insulators (default 50)")
    p.add_argument("--metrics-port", type=int, default=9108, help="inference /metrics port")
    p.set_defaults(func=run)
