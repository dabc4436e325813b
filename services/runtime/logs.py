"""Logging setup for service entry points: one line per record, as text or as JSON.

Text (the default) is for people at a terminal. JSON is for log pipelines (Loki, Elasticsearch,
Cloud Logging): one object per line with stable fields, `time` (ISO 8601, UTC), `level`,
`service`, `logger` and `message`, then whatever the call passed as `extra=` (topic, partition,
model_version, counts), then `exception` when there is one. Every library that logs through
Python logging comes out the same way, librdkafka included: its lines are forwarded to the
`driftline.librdkafka` logger (runtime/settings.py), and their facility and client name become
fields of their own.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from driftline.services.runtime.settings import LIBRDKAFKA_LOGGER, LogFormat

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIXED_FIELDS = ("time", "level", "service", "logger", "message")

# The attributes every LogRecord has; any other attribute came from `extra=`.
_RECORD_ATTRS = frozenset(
    [*vars(logging.LogRecord("", 0, "", 0, "", None, None)), "message", "asctime", "taskName"]
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: a newline in a message is escaped, never split."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                # The fixed fields keep their meaning; an extra of the same name is kept aside.
                doc[f"extra_{key}" if key in FIXED_FIELDS else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return _dumps(doc)


def _dumps(doc: dict[str, Any]) -> str:
    try:
        return json.dumps(doc, ensure_ascii=False, allow_nan=False, default=_plain)
    except (TypeError, ValueError, RecursionError):
        # NaN, a circular structure, an object whose str() fails: the record still gets out.
        return json.dumps({k: _scalar(v) for k, v in doc.items()}, ensure_ascii=False)


def _plain(value: object) -> object:
    """JSON for what json does not know: numpy scalars and arrays, sets, datetimes, the rest."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    isoformat = getattr(value, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    return str(value)


def _scalar(value: object) -> object:
    if value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    try:
        return str(value)
    except Exception:  # a broken __str__ must not lose the record
        return f"<unprintable {type(value).__name__}>"


class _LibrdkafkaFields(logging.Filter):
    """librdkafka's lines arrive as ("%s [%s] %s", facility, client, text): name the parts."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 3:
            record.facility, record.client = record.args[0], record.args[1]
        return True


def configure(level: str = "INFO", fmt: LogFormat = "text", service: str = "driftline") -> None:
    """Send every record to stderr, one line each, as text or JSON; replaces earlier setups."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # librdkafka-level chatter stays at WARNING unless asked for.
    logging.getLogger("confluent_kafka").setLevel(
        max(logging.WARNING, logging.getLevelName(level.upper()))
    )
    rdkafka = logging.getLogger(LIBRDKAFKA_LOGGER)
    for old in [f for f in rdkafka.filters if isinstance(f, _LibrdkafkaFields)]:
        rdkafka.removeFilter(old)
    if fmt == "json":
        rdkafka.addFilter(_LibrdkafkaFields())
    _route_stray_output(fmt == "json")


def _route_stray_output(to_logging: bool) -> None:
    """In JSON mode warnings and uncaught exceptions are records too, so stderr stays JSON."""
    logging.captureWarnings(to_logging)
    if to_logging:
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    else:
        sys.excepthook = sys.__excepthook__
        threading.excepthook = threading.__excepthook__


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("driftline").critical(
        "uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb)
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("driftline").critical(
        "uncaught %s in thread %s: %s",
        args.exc_type.__name__,
        name,
        args.exc_value,
        exc_info=args.exc_value,
    )


def json_configured() -> bool:
    """Whether configure() set up JSON lines (so a command's failure is a JSON record too)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


def report_failure(command: str, text: str) -> None:
    """A command's failure, for the person or pipeline reading stderr: one line either way."""
    if json_configured():
        logging.getLogger("driftline.cli").error(text, extra={"command": command})
    else:
        print(f"driftline {command}: {text}", file=sys.stderr)
