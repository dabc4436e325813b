"""Logging setup for service entry points: one line per record, level from settings."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # librdkafka-level chatter stays at WARNING unless asked for.
    logging.getLogger("confluent_kafka").setLevel(
        max(logging.WARNING, logging.getLevelName(level.upper()))
    )
