"""The topic table: every DESIGN topic, a DLQ per consumed topic, the registry compacted."""

from __future__ import annotations

from driftline.schemas.avro import schema_names
from driftline.schemas.topics import MODELS_REGISTRY, TOPIC_TABLE, Topics, all_specs


def test_table_covers_the_design() -> None:
    bases = {s.base for s in all_specs()}
    assert {
        "sensor.windows",
        "camera.images",
        "inference.results",
        "feedback.labels",
        "training.windows",
        "models.registry",
        "alerts",
        "sensor.windows.dlq",
        "camera.images.dlq",
        "feedback.labels.dlq",
    } <= bases
    assert {s.value_type for s in TOPIC_TABLE} <= set(schema_names())


def test_registry_is_compacted_and_kept_forever() -> None:
    spec = next(s for s in TOPIC_TABLE if s.base == MODELS_REGISTRY)
    assert spec.config()["cleanup.policy"] == "compact"
    assert spec.config()["retention.ms"] == "-1"
    assert spec.partitions == 1


def test_prefix_applies_to_every_name() -> None:
    t = Topics("blue.")
    assert t.sensor_windows == "blue.sensor.windows"
    assert t.dlq("sensor.windows") == "blue.sensor.windows.dlq"
    assert t.models_registry == "blue.models.registry"
