"""`driftline stack`: the local Kafka and Redis, without Docker."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from driftline.services.commands.args import given, port


def run(args: argparse.Namespace) -> int:
    from driftline.services import localstack as ls

    ports = ls.StackPorts.from_env()
    changes = given(args, ["kafka", "controller", "redis"])
    if changes:
        ports = ls.StackPorts(**{**ports.to_json(), **changes})
    data_dir = Path(args.data_dir) if args.data_dir else ls.default_data_dir()
    stack = ls.LocalStack(data_dir, ports)
    try:
        if args.action == "prepare":
            stack.prepare()
            print(f"ready: Kafka jars in {stack.jar_cache}; java and redis-server found")
        elif args.action == "up":
            st = stack.up()
            print(f"kafka  {st.bootstrap_servers}  (pid {st.kafka_pid})")
            print(f"redis  {st.redis_url}  (pid {st.redis_pid})")
            print(f"data   {st.data_dir}")
        elif args.action == "down":
            stack.down()
            print("stopped")
        else:
            st = stack.status()
            for svc, pid, up, addr in (
                ("kafka", st.kafka_pid, st.kafka_running, st.bootstrap_servers),
                ("redis", st.redis_pid, st.redis_running, st.redis_url),
            ):
                state = f"running (pid {pid})" if up else "stopped"
                print(f"{svc:6} {state:22} {addr}")
            print(f"data   {st.data_dir}")
            return 0 if st.kafka_running and st.redis_running else 3
    except ls.PrerequisiteMissing as exc:
        print(f"driftline stack: {exc}", file=sys.stderr)
        return 2
    except (ls.PortInUseError, ls.StackStartError) as exc:
        print(f"driftline stack: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # An unusable --data-dir (missing parent, read-only, /proc...): say which, no traceback.
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"driftline stack: cannot use{where}: {exc.strerror or exc}; "
            "choose a writable --data-dir (or DRIFTLINE_STACK_DIR)",
            file=sys.stderr,
        )
        return 1
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "stack",
        help="run a real local Kafka and Redis (no Docker)",
        description="Start, stop or inspect a single-node Kafka (KRaft) and a Redis on loopback. "
        "`up` is idempotent and returns once both accept connections; `down` stops exactly the "
        "processes `up` started. Ports also read DRIFTLINE_STACK_KAFKA_PORT, "
        "DRIFTLINE_STACK_CONTROLLER_PORT and DRIFTLINE_STACK_REDIS_PORT.",
    )
    p.add_argument(
        "action",
        choices=["up", "down", "status", "prepare"],
        help="prepare installs the jars and redis-server without starting anything",
    )
    p.add_argument("--kafka", type=port, metavar="PORT", help="Kafka client port (default 9092)")
    p.add_argument("--controller", type=port, metavar="PORT", help="KRaft controller port (9093)")
    p.add_argument("--redis", type=port, metavar="PORT", help="Redis port (default 6379)")
    p.add_argument(
        "--data-dir",
        help="where logs and data live (default: DRIFTLINE_STACK_DIR, else .driftline/stack in "
        "a checkout, $XDG_DATA_HOME/driftline/stack when installed)",
    )
    p.set_defaults(func=run)
