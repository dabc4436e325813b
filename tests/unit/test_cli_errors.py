"""CLI mistakes in the user's terms: argument types, and settings errors as flags or env vars."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from driftline.services.alerts.settings import AlertsSettings
from driftline.services.cli import build_parser, main
from driftline.services.commands import args as a
from driftline.services.commands.failures import flag_names, settings_error_lines
from driftline.services.features.settings import FeaturesSettings
from driftline.services.simulator.settings import SimulatorSettings


@pytest.mark.parametrize(
    ("kind", "text", "why"),
    [
        (a.positive_int, "0", "must be >= 1 (got 0)"),
        (a.positive_int, "x", "must be an integer (got 'x')"),
        (a.non_negative_int, "-1", "must be >= 0 (got -1)"),
        (a.non_negative_float, "-0.5", "must be a finite number >= 0"),
        (a.non_negative_float, "nan", "must be a finite number >= 0"),
        (a.fraction, "1.5", "must be between 0 and 1"),
        (a.port, "70000", "must be a port between 0 and 65535"),
        (a.redis_url, "localhost:6379", "must be a redis://"),
        (a.http_url, "ftp://host/x", "must be an http(s)://host/... URL"),
    ],
)
def test_argument_types_refuse_with_the_reason(kind: object, text: str, why: str) -> None:
    assert callable(kind)
    with pytest.raises(argparse.ArgumentTypeError) as info:
        kind(text)
    assert why in str(info.value)


def test_argument_types_pass_good_values_through() -> None:
    assert a.positive_int("3") == 3
    assert a.non_negative_float("0") == 0.0
    assert a.fraction("0.3") == 0.3
    assert a.redis_url("rediss://:pw@host:6380/1") == "rediss://:pw@host:6380/1"
    assert a.http_url("https://hooks.example/x?token=1") == "https://hooks.example/x?token=1"


def test_a_flag_out_of_bounds_is_named_as_the_flag() -> None:
    parser = build_parser()
    ns = parser.parse_args(["simulate", "sensors", "--label-fraction", "0.5"])
    ns.count = -5  # as if the argparse type had let it through
    with pytest.raises(ValidationError) as info:
        SimulatorSettings(count=-5)
    assert settings_error_lines(info.value, ns, flag_names(parser)) == [
        "--count must be >= 1 (got -5)"
    ]


def test_an_env_var_out_of_bounds_is_named_as_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DRIFTLINE_RATE", "-1")
    parser = build_parser()
    ns = parser.parse_args(["simulate", "sensors"])
    with pytest.raises(ValidationError) as info:
        SimulatorSettings()
    assert settings_error_lines(info.value, ns, flag_names(parser)) == [
        "DRIFTLINE_RATE must be >= 0 (got '-1')"
    ]


def test_urls_are_never_echoed_since_they_may_hold_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DRIFTLINE_REDIS_URL", "http://:hunter2@host")
    monkeypatch.setenv("DRIFTLINE_WEBHOOK_URL", "ftp://user:hunter2@host/x")
    ns = argparse.Namespace()
    for cls in (FeaturesSettings, AlertsSettings):
        with pytest.raises(ValidationError) as info:
            cls()
        (line,) = settings_error_lines(info.value, ns, {})
        assert line.startswith("DRIFTLINE_")
        assert " must be " in line
        assert "hunter2" not in line


def test_main_turns_a_settings_error_into_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRIFTLINE_K", "9")
    monkeypatch.setenv("DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["alerts"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("driftline alerts: ")
    assert len(err.strip().splitlines()) == 1
