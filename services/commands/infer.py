"""`driftline infer`: the ONNX Runtime inference consumer."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from driftline.services.commands.args import (
    add_kafka_flags,
    non_negative_int,
    port,
    positive_int,
    settings_from,
)
from driftline.services.commands.preflight import check_kafka


def run(args: argparse.Namespace) -> int:
    from driftline.services.inference import service
    from driftline.services.inference.settings import InferenceSettings
    from driftline.services.runtime import logs
    from driftline.services.runtime.shutdown import StopFlag

    settings = settings_from(
        InferenceSettings,
        args,
        ["modality", "max_batch", "max_wait_ms", "group_id", "metrics_port", "model_name"],
    )
    logs.configure(settings.log_level)
    check_kafka(settings.kafka)
    try:
        service.run(settings, StopFlag().install())
    except service.NoModelError as exc:
        print(f"driftline infer: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "infer",
        help="score events with the registry's current ONNX model",
        description="Consume a modality's topic in micro-batches, score each batch with ONNX "
        "Runtime and publish one InferenceResult per event. Input offsets are committed only "
        "after the results are acknowledged (at-least-once). Bad records go to <topic>.dlq.",
    )
    p.add_argument("--modality", choices=["sensor", "image"], help="what to score (sensor)")
    p.add_argument(
        "--max-batch", type=positive_int, help="largest batch (default: sensor 256, image 32)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=non_negative_int,
        help="longest wait from a batch's first event (sensor 20, image 50)",
    )
    p.add_argument("--group-id", help="consumer group (default driftline-inference-<modality>)")
    p.add_argument("--model-name", help="registry model to serve (default per modality)")
    p.add_argument("--metrics-port", type=port, help="serve /metrics, /healthz, /readyz here")
    add_kafka_flags(p)
    p.set_defaults(func=run)
