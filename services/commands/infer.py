"""`driftline infer`: the ONNX Runtime inference consumer."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from driftline.services.commands.args import (
    add_kafka_flags,
    add_log_flags,
    non_negative_int,
    port,
    positive_int,
    settings_from,
)
from driftline.services.commands.preflight import check_kafka

if TYPE_CHECKING:
    from driftline.services.inference.settings import InferenceSettings


SETTING_FLAGS = [
    "modality",
    "max_batch",
    "max_wait_ms",
    "group_id",
    "metrics_port",
    "model_name",
    "exactly_once",
]


def infer_settings(args: argparse.Namespace) -> InferenceSettings:
    """InferenceSettings from the environment, then the flags given (--at-least-once wins over
    DRIFTLINE_EXACTLY_ONCE=true, as any flag wins over its variable)."""
    from driftline.services.inference.settings import InferenceSettings

    return settings_from(InferenceSettings, args, SETTING_FLAGS)


def run(args: argparse.Namespace) -> int:
    from driftline.services.inference import service
    from driftline.services.runtime import logs
    from driftline.services.runtime.shutdown import StopFlag

    settings = infer_settings(args)
    logs.configure(settings.log_level, settings.log_format, settings.service_name)
    check_kafka(settings.kafka)
    try:
        service.run(settings, StopFlag().install())
    except service.NoModelError as exc:
        logs.report_failure("infer", str(exc))
        return 1
    return 0


DESCRIPTION = """\
Consume a modality's topic in micro-batches, score each batch with ONNX Runtime and publish
one InferenceResult per event to inference.results; bad records go to <topic>.dlq.

delivery guarantees (what a reader sees after a crash):
  at-least-once (the default): a batch's input offsets are committed only after the broker
    acknowledged every one of its results and dead letters. After a crash the uncommitted
    batches are scored again, so a reader may see a result twice, but never misses one.
  exactly-once (--exactly-once, or DRIFTLINE_EXACTLY_ONCE=true): each batch is one Kafka
    transaction holding its results, its dead letters and its input offsets, committed whole
    or aborted whole. read_committed readers see each result and dead letter once, at
    some throughput cost (a transaction per batch, so batches are 4x larger by default).
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "infer",
        help="score events with the registry's current ONNX model",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--modality", choices=["sensor", "image"], help="what to score (sensor)")
    p.add_argument(
        "--max-batch",
        type=positive_int,
        help="largest batch, reached under a backlog (default: sensor 512, image 64; four "
        "times that exactly-once)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=non_negative_int,
        help="how long a batch waits for more records once it has some (default 0: it "
        "closes as soon as nothing more is waiting, so latency stays low and batches grow "
        "only under a backlog)",
    )
    p.add_argument("--group-id", help="consumer group (default driftline-inference-<modality>)")
    p.add_argument("--model-name", help="registry model to serve (default per modality)")
    p.add_argument("--metrics-port", type=port, help="serve /metrics, /healthz, /readyz here")
    delivery = p.add_mutually_exclusive_group()
    delivery.add_argument(
        "--exactly-once",
        dest="exactly_once",
        action="store_const",
        const=True,
        help="one Kafka transaction per batch (described above)",
    )
    delivery.add_argument(
        "--at-least-once",
        dest="exactly_once",
        action="store_const",
        const=False,
        help="commit after the results are acknowledged: the default, and it overrides "
        "DRIFTLINE_EXACTLY_ONCE",
    )
    add_log_flags(p)
    add_kafka_flags(p)
    p.set_defaults(func=run)
