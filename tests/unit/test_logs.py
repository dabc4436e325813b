"""JSON log lines: stable fields, the record's extras, exceptions, any text, one line per record."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from driftline.services.runtime import logs
from driftline.services.runtime.settings import LIBRDKAFKA_LOGGER


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of the test's own that writes JSON lines into a buffer."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter("inference"))
    logger = logging.getLogger(f"driftline.test.{id(out)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def records(out: io.StringIO) -> list[dict[str, Any]]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_a_record_has_the_stable_fields(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = lines
    before = datetime.now(UTC)
    logger.warning("lag %d on %s", 12, "sensor.windows")
    (rec,) = records(out)
    assert list(rec)[:5] == ["time", "level", "service", "logger", "message"]
    assert rec["level"] == "WARNING"
    assert rec["service"] == "inference"
    assert rec["logger"] == logger.name
    assert rec["message"] == "lag 12 on sensor.windows"
    assert rec["time"].endswith("Z")
    when = datetime.fromisoformat(rec["time"])
    assert when.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= when <= datetime.now(UTC) + timedelta(seconds=1)
    assert "exception" not in rec


def test_extra_fields_become_fields(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = lines
    logger.info(
        "now serving",
        extra={
            "topic": "sensor.windows",
            "partition": 3,
            "model_version": 7,
            "counts": {"scored": 250, "dead_lettered": 2},
            "load_seconds": 0.25,
        },
    )
    (rec,) = records(out)
    assert rec["topic"] == "sensor.windows"
    assert rec["partition"] == 3
    assert rec["model_version"] == 7
    assert rec["counts"] == {"scored": 250, "dead_lettered": 2}
    assert rec["load_seconds"] == 0.25


def test_an_extra_never_overrides_a_stable_field(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = lines
    logger.info("hello", extra={"service": "someone else", "level": "loud"})
    (rec,) = records(out)
    assert (rec["service"], rec["level"]) == ("inference", "INFO")
    assert (rec["extra_service"], rec["extra_level"]) == ("someone else", "loud")


def test_values_json_does_not_know_still_make_a_line(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = lines
    logger.info(
        "odd values",
        extra={
            "count": np.int64(5),
            "probs": np.array([0.25, 0.75], dtype=np.float32),
            "partitions": {2, 1},
            "since": datetime(2026, 1, 2, tzinfo=UTC),
            "thing": object(),
        },
    )
    logger.info("not a number", extra={"score": float("nan")})
    first, second = records(out)
    assert first["count"] == 5
    assert first["probs"] == [0.25, 0.75]
    assert first["partitions"] == [1, 2]
    assert first["since"] == "2026-01-02T00:00:00+00:00"
    assert first["thing"].startswith("<object object")
    assert second["score"] == "nan"  # JSON has no NaN: a string, and the record is still valid


def test_an_exception_comes_with_its_traceback(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = lines
    try:
        raise ValueError("corrupt artifact\nsecond line of the reason")
    except ValueError:
        logger.exception("rejected v3", extra={"model_version": 3})
    assert out.getvalue().count("\n") == 1
    (rec,) = records(out)
    assert rec["level"] == "ERROR"
    assert rec["message"] == "rejected v3"
    assert rec["exception"].startswith("Traceback (most recent call last):")
    assert rec["exception"].endswith("ValueError: corrupt artifact\nsecond line of the reason")
    assert rec["model_version"] == 3


def test_any_text_and_newlines_stay_one_line(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = lines
    message = 'Isolator geprüft — 絶縁体 ⚡\nline two\r\n\t"quoted" \\ \x00 end'
    logger.info(message, extra={"asset": "mât-7"})
    logger.info("second record")
    assert out.getvalue().count("\n") == 2
    first, second = records(out)
    assert first["message"] == message
    assert first["asset"] == "mât-7"
    assert "geprüft" in out.getvalue()  # readable UTF-8, not \u escapes
    assert second["message"] == "second record"


def test_librdkafka_lines_name_their_facility_and_client() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter("alerts"))
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    # confluent-kafka forwards each librdkafka line this way.
    record = logger.makeRecord(
        LIBRDKAFKA_LOGGER,
        logging.ERROR,
        "",
        0,
        "%s [%s] %s",
        ("FAIL", "rdkafka#consumer-1", "127.0.0.1:1/bootstrap: Connect failed"),
        None,
    )
    logs._LibrdkafkaFields().filter(record)
    handler.handle(record)
    (rec,) = records(out)
    assert rec["logger"] == LIBRDKAFKA_LOGGER
    assert rec["message"] == "FAIL [rdkafka#consumer-1] 127.0.0.1:1/bootstrap: Connect failed"
    assert (rec["facility"], rec["client"]) == ("FAIL", "rdkafka#consumer-1")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure() replaces the root logger's setup: put the test runner's back afterwards."""
    root, rdkafka = logging.getLogger(), logging.getLogger(LIBRDKAFKA_LOGGER)
    handlers, level, rdkafka_level = root.handlers[:], root.level, rdkafka.level
    rdkafka.setLevel(logging.NOTSET)  # `driftline` without -v quiets it; a test may have run it
    yield
    logs.configure("INFO", "text")
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    rdkafka.setLevel(rdkafka_level)
    rdkafka.filters.clear()


@pytest.mark.usefixtures("root_logging")
def test_configure_json_makes_every_logger_and_failure_a_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("info", "json", "trainer")
    assert logs.json_configured()
    logging.getLogger("driftline.trainer.runs").debug("below the level: not shown")
    logging.getLogger("driftline.trainer.runs").info("trained", extra={"outcome": "promoted"})
    logging.getLogger(LIBRDKAFKA_LOGGER).warning(
        "%s [%s] %s", "REQTMOUT", "rdkafka#producer-2", "timed out"
    )
    logs.report_failure("train", "cannot reach Kafka\n  is Kafka running?")
    thread = threading.Thread(target=lambda: 1 / 0, name="fetcher")
    thread.start()
    thread.join()
    err = capsys.readouterr().err
    recs = [json.loads(line) for line in err.splitlines()]
    assert [r["message"] for r in recs[:3]] == [
        "trained",
        "REQTMOUT [rdkafka#producer-2] timed out",
        "cannot reach Kafka\n  is Kafka running?",
    ]
    assert all(r["service"] == "trainer" for r in recs)
    assert recs[0]["outcome"] == "promoted"
    assert recs[1]["facility"] == "REQTMOUT"
    assert (recs[2]["level"], recs[2]["command"]) == ("ERROR", "train")
    assert recs[3]["level"] == "CRITICAL"
    assert "ZeroDivisionError" in recs[3]["exception"]
    assert "fetcher" in recs[3]["message"]
    assert len(recs) == 4


@pytest.mark.usefixtures("root_logging")
def test_configure_text_keeps_todays_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "text", "alerts")
    assert not logs.json_configured()
    assert sys.excepthook is sys.__excepthook__
    logging.getLogger("driftline.alerts").info("raised %d alerts", 2)
    logs.report_failure("alerts", "no broker answered")
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith(" INFO driftline.alerts: raised 2 alerts")
    assert err[1] == "driftline alerts: no broker answered"
