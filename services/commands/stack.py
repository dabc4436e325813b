"""`driftline stack`: the local Kafka and Redis, without Docker."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from driftline.services.commands.args import given, port


def run(args: argparse.Namespace) -> int:
    from driftline.services import localstack as ls

    ports = ls.StackPorts.from_env()
    changes = given(args, ["kafka", "controller", "redis"])
    if changes:
        ports = dataclasses.replace(ports, **changes)
    if args.brokers is not None:
        ports = ports.with_brokers(args.brokers)
    data_dir = Path(args.data_dir) if args.data_dir else ls.default_data_dir()
    stack = ls.LocalStack(data_dir, ports)
    if args.brokers is None and args.action == "up":
        # Without --brokers, a data dir's stack keeps the size it was started with.
        recorded = len(stack.status().kafka_pids)
        if recorded > 1:
            stack = ls.LocalStack(data_dir, ports.with_brokers(recorded))
    try:
        if args.action == "prepare":
            stack.prepare()
            print(f"ready: Kafka jars in {stack.jar_cache}; java and redis-server found")
        elif args.action == "up":
            st = stack.up()
            pids = ", ".join(str(pid) for pid in st.kafka_pids)
            print(f"kafka  {st.bootstrap_servers}  (pid {pids})")
            print(f"redis  {st.redis_url}  (pid {st.redis_pid})")
            print(f"data   {st.data_dir}")
        elif args.action == "down":
            stack.down()
            print("stopped")
        else:
            st = stack.status()
            addrs = st.bootstrap_servers.split(",")
            rows = [
                (f"kafka{i + 1}" if len(addrs) > 1 else "kafka", pid, pid is not None, addr)
                for i, (pid, addr) in enumerate(zip(st.kafka_pids, addrs, strict=True))
            ]
            rows.append(("redis", st.redis_pid, st.redis_running, st.redis_url))
            for svc, pid, up, addr in rows:
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


def _brokers(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of brokers") from None
    if value not in (1, 3, 5):
        raise argparse.ArgumentTypeError(
            f"{value} brokers: a KRaft quorum of 1, 3 or 5 nodes (an even count tolerates no "
            "more failures than the odd one below it)"
        )
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "stack",
        help="run a real local Kafka and Redis (no Docker)",
        description="Start, stop or inspect a Kafka (KRaft) and a Redis on loopback: one Kafka "
        "node, or a cluster with --brokers 3 (three combined broker+controller nodes on ports "
        "9092/9093, 9094/9095 and 9096/9097; topics then get replication factor 3 and "
        "min.insync.replicas 2, so any one node may fail). `up` is idempotent, restarts a node "
        "that died, and returns once every node and Redis accept connections; `down` stops "
        "exactly the processes `up` started, every node. Ports also read "
        "DRIFTLINE_STACK_KAFKA_PORT, DRIFTLINE_STACK_CONTROLLER_PORT and "
        "DRIFTLINE_STACK_REDIS_PORT.",
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
        "--brokers",
        type=_brokers,
        metavar="N",
        help="Kafka nodes for `up`: 1 (default) or 3; node i takes the ports 2(i-1) above "
        "node 1's. A data dir keeps the size it was first started with.",
    )
    p.add_argument(
        "--data-dir",
        help="where logs and data live (default: DRIFTLINE_STACK_DIR, else .driftline/stack in "
        "a checkout, $XDG_DATA_HOME/driftline/stack when installed)",
    )
    p.set_defaults(func=run)
