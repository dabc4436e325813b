"""Topic creation is idempotent; the registry is compacted, keeps history and a champion pointer."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from confluent_kafka.admin import ConfigResource, ResourceType

from driftline.schemas.messages import STATUS_CHAMPION, STATUS_REJECTED, ModelVersion
from driftline.schemas.topics import all_specs
from driftline.services.inference.model import REJECT_DIGEST, REJECT_FETCH, ModelRejected, load
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import FsspecArtifactStore
from driftline.services.runtime.kafka import admin, create_topics
from driftline.services.runtime.settings import KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_create_topics_is_idempotent_and_compacts_the_registry(kafka: KafkaSettings) -> None:
    created, existing = create_topics(kafka)
    assert created == []
    assert sorted(existing) == sorted(kafka.topics.name(s.base) for s in all_specs())
    resource = ConfigResource(ResourceType.TOPIC, kafka.topics.models_registry)
    client = admin(kafka)  # keep a reference: the futures die with their client
    configs = client.describe_configs([resource])[resource].result(timeout=30)
    assert configs["cleanup.policy"].value == "compact"
    meta = client.list_topics(kafka.topics.sensor_windows, timeout=10)
    assert len(meta.topics[kafka.topics.sensor_windows].partitions) == 3


def test_registry_keeps_every_version_and_follows_the_champion(
    kafka: KafkaSettings, sensor_champion: ModelVersion
) -> None:
    topic = kafka.topics.models_registry
    worse = msgspec.structs.replace(sensor_champion, version=2, status=STATUS_REJECTED)
    registry.publish(kafka, topic, worse)
    snap = registry.read_snapshot(kafka, topic)
    assert sorted(snap.versions[sensor_champion.name]) == [1, 2]
    assert snap.champions[sensor_champion.name].version == 1
    assert snap.latest_version(sensor_champion.name) == 2

    better = msgspec.structs.replace(sensor_champion, version=3, status=STATUS_CHAMPION)
    registry.publish(kafka, topic, better)
    assert registry.read_snapshot(kafka, topic).champions[sensor_champion.name].version == 3

    # Rollback: publish the earlier version as champion again.
    registry.publish(kafka, topic, sensor_champion)
    assert registry.read_snapshot(kafka, topic).champions[sensor_champion.name].version == 1


def test_a_tampered_or_missing_artifact_is_refused(sensor_champion: ModelVersion) -> None:
    store = FsspecArtifactStore("file:///")
    assert load(sensor_champion, store).version == sensor_champion
    path = Path(sensor_champion.artifact_uri.removeprefix("file://"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelRejected, match="sha256 mismatch") as caught:
        load(sensor_champion, store)
    assert caught.value.reason == REJECT_DIGEST
    path.unlink()
    with pytest.raises(ModelRejected, match="cannot read") as caught:
        load(sensor_champion, store)
    assert caught.value.reason == REJECT_FETCH
