"""The `driftline` command: run the local stack, create topics, simulate, score, train."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXAMPLES = """\
a first run, on one machine:
  driftline stack up                      # real Kafka (KRaft) and Redis, no Docker
  driftline topics create                 # every topic of the table, idempotent
  driftline train --bootstrap             # first sensor model, published to models.registry
  driftline infer --modality sensor &     # score sensor.windows into inference.results
  driftline simulate sensors --count 5000 # a fleet of insulators publishing windows
  driftline demo                          # all of the above, with live progress

every setting also reads from the environment, prefix DRIFTLINE_, e.g.
  DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS=broker:9092
  DRIFTLINE_KAFKA__TOPIC_PREFIX=staging.
  DRIFTLINE_KAFKA__CLIENT='{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}'
  DRIFTLINE_KAFKA__SASL_USERNAME=... DRIFTLINE_KAFKA__SASL_PASSWORD=...
"""


def _overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """Command-line values that were given; unset ones fall back to env and defaults."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _kafka_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from services.runtime.settings import KafkaSettings

    base = KafkaSettings.model_validate({})
    changes = _overrides(args, ["bootstrap_servers", "topic_prefix"])
    return {"kafka": base.model_copy(update=changes)} if changes else {}


def _add_kafka_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default 127.0.0.1:9092)")
    p.add_argument("--topic-prefix", help="prefix of every topic name, to share a cluster")


def cmd_stack(args: argparse.Namespace) -> int:
    from services.runtime import localstack as ls

    ports = ls.StackPorts.from_env()
    changes = _overrides(args, ["kafka", "controller", "redis"])
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
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from services.runtime.kafka import create_topics
    from services.runtime.settings import DriftlineSettings

    settings = DriftlineSettings(**_kafka_overrides(args))
    created, existing = create_topics(settings.kafka, partitions=args.partitions)
    for name in created:
        print(f"created  {name}")
    for name in existing:
        print(f"exists   {name}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from services.runtime.settings import SimulatorSettings
    from services.runtime.shutdown import StopFlag
    from services.simulator import sensors

    settings = SimulatorSettings(
        **_overrides(args, ["assets", "rate", "count", "seed", "fault_fraction"]),
        **_kafka_overrides(args),
    )
    stop = StopFlag().install()
    sensors.run(settings, stop=stop)
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from services.inference import service
    from services.runtime import logs
    from services.runtime.settings import InferenceSettings
    from services.runtime.shutdown import StopFlag

    settings = InferenceSettings(
        **_overrides(
            args,
            ["modality", "max_batch", "max_wait_ms", "group_id", "metrics_port", "model_name"],
        ),
        **_kafka_overrides(args),
    )
    logs.configure(settings.log_level)
    stop = StopFlag().install()
    try:
        service.run(settings, stop)
    except service.NoModelError as exc:
        print(f"driftline infer: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_train(args: argparse.Namespace) -> int:
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

    settings = TrainerSettings(
        **_overrides(args, ["epochs", "seed", "artifact_root", "device"]),
        **_kafka_overrides(args),
    )
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


def cmd_models(args: argparse.Namespace) -> int:
    from services.runtime import registry
    from services.runtime.settings import DriftlineSettings

    settings = DriftlineSettings(**_kafka_overrides(args))
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


def cmd_demo(args: argparse.Namespace) -> int:
    from services import demo

    return demo.main(rate=args.rate, assets=args.assets, metrics_port=args.metrics_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftline",
        description="Streaming inference with online retraining: Kafka, ONNX Runtime, Redis.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.add_argument("--kafka", type=int, metavar="PORT", help="Kafka client port (default 9092)")
    p.add_argument("--controller", type=int, metavar="PORT", help="KRaft controller port (9093)")
    p.add_argument("--redis", type=int, metavar="PORT", help="Redis port (default 6379)")
    p.add_argument("--data-dir", help="where logs and data live (default .driftline/stack)")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser(
        "topics",
        help="create every driftline topic (idempotent)",
        description="Create every topic of the topic table and its dead-letter topics. Existing "
        "topics are left alone; models.registry is compacted.",
    )
    p.add_argument("action", choices=["create"])
    p.add_argument("--partitions", type=int, help="override every topic's partition count")
    _add_kafka_flags(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("simulate", help="publish synthetic insulator events")
    p.add_argument("source", choices=["sensors"], help="what to simulate")
    p.add_argument("--assets", type=int, help="insulators in the fleet (default 50)")
    p.add_argument("--rate", type=float, help="windows per second for the fleet (default 200)")
    p.add_argument("--count", type=int, help="stop after this many windows (default: run on)")
    p.add_argument("--seed", type=int, help="random seed (default 7)")
    p.add_argument("--fault-fraction", type=float, help="share of faulty insulators (0.4)")
    _add_kafka_flags(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "infer",
        help="score events with the registry's current ONNX model",
        description="Consume a modality's topic in micro-batches, score each batch with ONNX "
        "Runtime and publish one InferenceResult per event. Input offsets are committed only "
        "after the results are acknowledged (at-least-once). Bad records go to <topic>.dlq.",
    )
    p.add_argument("--modality", choices=["sensor"], default=None, help="what to score (sensor)")
    p.add_argument("--max-batch", type=int, help="largest batch (default 256)")
    p.add_argument("--max-wait-ms", type=int, help="longest wait to fill a batch (default 20)")
    p.add_argument("--group-id", help="consumer group (default driftline-inference-<modality>)")
    p.add_argument("--model-name", help="registry model to serve (default per modality)")
    p.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz here")
    _add_kafka_flags(p)
    p.set_defaults(func=cmd_infer)

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
    _add_kafka_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="show the model registry")
    p.add_argument("action", choices=["list"])
    _add_kafka_flags(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "demo",
        help="the whole path on the local stack, with live progress (Ctrl-C to stop)",
        description="Start the local stack, create topics, bootstrap a model if the registry has "
        "none, then run the simulator and the sensor inference consumer and show progress.",
    )
    p.add_argument("--rate", type=float, default=200.0, help="windows per second (default 200)")
    p.add_argument("--assets", type=int, default=50, help="insulators (default 50)")
    p.add_argument("--metrics-port", type=int, default=9108, help="inference /metrics port")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # librdkafka retries a lost broker every few ms and logs each try; failures that matter
    # surface as errors of the call that needed the broker.
    logging.getLogger("driftline.librdkafka").setLevel(
        logging.DEBUG if args.verbose else logging.CRITICAL
    )
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from confluent_kafka import KafkaException

        if isinstance(exc, (KafkaException, TimeoutError)) or "not found" in str(exc):
            print(
                f"driftline {args.command}: {exc}\n"
                "  is Kafka running and reachable? `driftline stack up` starts a local one; "
                "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS points elsewhere",
                file=sys.stderr,
            )
            return 1
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
