"""Settings read DRIFTLINE_ env vars, pass librdkafka options through and hide secrets."""

from __future__ import annotations

import pytest

from driftline.services.alerts.settings import AlertsSettings
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.simulator.settings import SimulatorSettings
from driftline.trainer.settings import TrainerSettings


def test_nested_env_and_passthrough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS", "broker-1:9093,broker-2:9093")
    monkeypatch.setenv("DRIFTLINE_KAFKA__TOPIC_PREFIX", "staging.")
    monkeypatch.setenv(
        "DRIFTLINE_KAFKA__CLIENT",
        '{"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}',
    )
    monkeypatch.setenv("DRIFTLINE_KAFKA__SASL_USERNAME", "svc-inference")
    monkeypatch.setenv("DRIFTLINE_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("DRIFTLINE_MAX_BATCH", "64")
    settings = InferenceSettings()
    assert settings.max_batch == 64
    assert settings.kafka.topics.sensor_windows == "staging.sensor.windows"
    conf = settings.kafka.client_config(**{"group.id": "g"})
    assert conf.pop("logger").name == "driftline.librdkafka"
    assert conf == {
        "bootstrap.servers": "broker-1:9093,broker-2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc-inference",
        "sasl.password": "s3cret",
        "group.id": "g",
    }
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.model_dump())


def test_settings_are_frozen_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = SimulatorSettings()
    with pytest.raises(ValueError, match="frozen"):
        settings.rate = 5  # type: ignore[misc]
    monkeypatch.setenv("DRIFTLINE_RATE", "-3")
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        SimulatorSettings()


def test_defaults_name_the_model_and_group_per_modality() -> None:
    settings = InferenceSettings(modality="sensor", kafka=KafkaSettings())
    assert settings.effective_model_name == "insulator-sensor"
    assert settings.effective_group_id == "driftline-inference-sensor"


def test_group_and_transactional_ids_carry_the_deployment_prefix() -> None:
    blue, green = KafkaSettings(topic_prefix="blue."), KafkaSettings(topic_prefix="green.")
    ids = {
        s.effective_group_id
        for s in (
            InferenceSettings(kafka=blue),
            InferenceSettings(kafka=green),
            AlertsSettings(kafka=blue),
            AlertsSettings(kafka=green),
            TrainerSettings(kafka=blue),
            TrainerSettings(kafka=green),
        )
    }
    assert ids == {
        "blue.driftline-inference-sensor",
        "green.driftline-inference-sensor",
        "blue.driftline-alerts",
        "green.driftline-alerts",
        "blue.driftline-trainer",
        "green.driftline-trainer",
    }
    one_host = [InferenceSettings(kafka=blue, instance_id=h) for h in ("node-0", "node-1")]
    assert one_host[0].transactional_id != one_host[1].transactional_id
    assert InferenceSettings(kafka=blue, group_id="mine").effective_group_id == "mine"


def test_command_line_flags_override_env_without_dropping_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from driftline.services.cli import build_parser
    from driftline.services.commands.args import settings_from

    monkeypatch.setenv("DRIFTLINE_KAFKA__TOPIC_PREFIX", "blue.")
    monkeypatch.setenv("DRIFTLINE_MAX_WAIT_MS", "7")
    args = build_parser().parse_args(
        ["infer", "--bootstrap-servers", "10.0.0.9:9092", "--max-batch", "32"]
    )
    settings = settings_from(InferenceSettings, args, ["max_batch", "max_wait_ms"])
    assert settings.kafka.bootstrap_servers == "10.0.0.9:9092"
    assert settings.kafka.topic_prefix == "blue."
    assert (settings.max_batch, settings.max_wait_ms) == (32, 7)
