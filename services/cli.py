"""The `driftline` command: run the local stack, create topics, simulate, score, train."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from driftline.services.commands import (
    alerts,
    bench,
    demo,
    dlq,
    doctor,
    features,
    infer,
    models,
    schemas,
    simulate,
    stack,
    topics,
    train,
)
from driftline.services.commands.failures import KAFKA_HINT, flag_names, settings_error_lines

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


COMMANDS = (
    stack,
    topics,
    doctor,
    simulate,
    infer,
    features,
    alerts,
    dlq,
    train,
    models,
    demo,
    bench,
    schemas,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftline",
        description="Streaming inference with online retraining: Kafka, ONNX Runtime, Redis.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # librdkafka retries a lost broker every few ms and logs each try; failures that matter
    # surface as errors of the call that needed the broker.
    logging.getLogger("driftline.librdkafka").setLevel(
        logging.DEBUG if args.verbose else logging.CRITICAL
    )
    # Plain lines, or JSON records once a service set up --log-format json.
    from driftline.services.runtime.logs import report_failure

    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except ValidationError as exc:
        # A setting out of bounds, from a flag or the environment: a usage error, as argparse's.
        for line in settings_error_lines(exc, args, flag_names(parser)):
            report_failure(args.command, line)
        return 2
    except Exception as exc:
        from confluent_kafka import KafkaException

        from driftline.services.runtime.reader import TopicMissing

        if isinstance(exc, TopicMissing):
            # The broker answered; the message says which topic and what to run.
            report_failure(args.command, str(exc))
            return 1
        if isinstance(exc, (KafkaException, TimeoutError)) or "not found" in str(exc):
            report_failure(args.command, f"{exc}\n{KAFKA_HINT}")
            return 1
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
