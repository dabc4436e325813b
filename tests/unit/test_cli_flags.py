"""Delivery modes and log flags on the command line: what they set, what --help teaches."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from driftline.services.cli import build_parser, main
from driftline.services.commands.infer import infer_settings
from driftline.services.inference.settings import DEFAULT_MAX_BATCH, InferenceSettings

SERVICES = ["infer", "features", "train", "alerts"]


def settings(argv: list[str]) -> InferenceSettings:
    return infer_settings(build_parser().parse_args(["infer", *argv]))


@pytest.mark.parametrize(
    ("env", "argv", "exactly_once"),
    [
        (None, [], False),
        (None, ["--exactly-once"], True),
        (None, ["--at-least-once"], False),
        ("true", [], True),
        ("true", ["--at-least-once"], False),  # a flag wins over its variable
        ("false", ["--exactly-once"], True),
    ],
)
def test_delivery_mode_from_flag_or_environment(
    monkeypatch: pytest.MonkeyPatch, env: str | None, argv: list[str], exactly_once: bool
) -> None:
    monkeypatch.delenv("DRIFTLINE_EXACTLY_ONCE", raising=False)
    if env is not None:
        monkeypatch.setenv("DRIFTLINE_EXACTLY_ONCE", env)
    s = settings(argv)
    assert s.exactly_once is exactly_once
    # What exactly-once changes downstream: larger batches per transaction by default.
    base = DEFAULT_MAX_BATCH["sensor"]
    assert s.batch_size == (4 * base if exactly_once else base)


def test_both_delivery_modes_at_once_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["infer", "--exactly-once", "--at-least-once"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("command", SERVICES)
def test_log_format_and_level_flags_on_every_service(
    monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.delenv("DRIFTLINE_LOG_FORMAT", raising=False)
    monkeypatch.delenv("DRIFTLINE_LOG_LEVEL", raising=False)
    args = build_parser().parse_args([command, "--log-format", "JSON", "--log-level", "warning"])
    assert (args.log_format, args.log_level) == ("json", "WARNING")
    plain = build_parser().parse_args([command])
    assert (plain.log_format, plain.log_level) == (None, None)


def test_log_settings_from_flags_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DRIFTLINE_LOG_FORMAT", raising=False)
    monkeypatch.delenv("DRIFTLINE_LOG_LEVEL", raising=False)
    assert (settings([]).log_format, settings([]).log_level) == ("text", "INFO")
    assert settings(["--log-format", "json"]).log_format == "json"
    monkeypatch.setenv("DRIFTLINE_LOG_FORMAT", "Json")
    monkeypatch.setenv("DRIFTLINE_LOG_LEVEL", "debug")
    assert (settings([]).log_format, settings([]).log_level) == ("json", "DEBUG")
    assert settings(["--log-format", "text"]).log_format == "text"


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("DRIFTLINE_LOG_FORMAT", "yaml", "DRIFTLINE_LOG_FORMAT should be 'text' or 'json'"),
        ("DRIFTLINE_LOG_LEVEL", "loud", "DRIFTLINE_LOG_LEVEL must be one of DEBUG, INFO"),
    ],
)
def test_bad_log_settings_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    said: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        settings([])
    assert main(["infer"]) == 2
    err = capsys.readouterr().err
    assert said in err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_bad_log_flag_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["alerts", "--log-format", "xml"])
    assert info.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_infer_help_explains_both_guarantees(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["infer", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for phrase in (
        "--exactly-once",
        "--at-least-once",
        "DRIFTLINE_EXACTLY_ONCE=true",
        "at-least-once (the default)",
        "a reader may see a result twice, but never misses one",
        "one Kafka transaction holding its results, its dead letters and its input offsets",
        "read_committed readers see each result and dead letter once",
        "throughput cost",
        "--log-format {text,json}",
    ):
        assert phrase in out, phrase


@pytest.mark.parametrize("command", SERVICES)
def test_every_service_help_teaches_json_logs(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "json for log pipelines: one object per line" in out
    assert "DRIFTLINE_LOG_FORMAT" in out
