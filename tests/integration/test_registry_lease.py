"""One publisher per model: two publishers racing for a version never collide.

Every publisher of a model shares one transactional id; taking it fences the previous holder,
so of two publishers that read the same next version only the later one commits, the other
gets RegistryConflict and publishes the version after. Artifact folders are unique per build,
so the loser never overwrote the winner's files: every record verifies.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES
from driftline.schemas.messages import STATUS_CHAMPION, Lineage, ModelVersion
from driftline.services.runtime import registry
from driftline.services.runtime.artifacts import FsspecArtifactStore, fetch_trusted
from driftline.services.runtime.kafka import create_topics
from driftline.services.runtime.settings import KafkaSettings
from driftline.trainer.bootstrap import TrainedModel
from driftline.trainer.publish import KafkaRegistryWriter, RegistryConflict, build_version

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NAME = MODEL_NAMES["sensor"]


def _build(store: FsspecArtifactStore, trained: TrainedModel, version: int) -> ModelVersion:
    return build_version(
        store=store,
        name=NAME,
        version=version,
        modality="sensor",
        exported=trained.exported,
        model=trained.model,
        classes=list(INSULATOR_CLASSES),
        metrics={},
        lineage=Lineage(source="lease-test"),
        status=STATUS_CHAMPION,
    )


def test_two_publishers_of_one_model_never_publish_the_same_version(
    kafka: KafkaSettings, tiny_sensor_model: object, tmp_path: Path
) -> None:
    assert isinstance(tiny_sensor_model, TrainedModel)
    create_topics(kafka)
    store = FsspecArtifactStore((tmp_path / "artifacts").as_uri())
    first, second = KafkaRegistryWriter(kafka), KafkaRegistryWriter(kafka)
    try:
        # Both read the registry before either publishes: both would take version 1.
        assert first.next_version(NAME) == 1
        assert second.next_version(NAME) == 1  # takes the lease from the first
        late = _build(store, tiny_sensor_model, 1)
        won = _build(store, tiny_sensor_model, 1)
        assert late.artifact_uri != won.artifact_uri
        second.publish(won)
        with pytest.raises(RegistryConflict):
            first.publish(late)
        # The loser reads again and publishes the next version.
        assert first.next_version(NAME) == 2
        again = _build(store, tiny_sensor_model, 2)
        first.publish(again)
    finally:
        first.close()
        second.close()
    snapshot = registry.read_snapshot(kafka, kafka.topics.models_registry)
    versions = snapshot.versions[NAME]
    assert sorted(versions) == [1, 2]
    assert versions[1].artifact_uri == won.artifact_uri
    assert snapshot.champions[NAME].version == 2
    for mv in versions.values():
        fetch_trusted(store, mv)  # every record's artifact is intact (sha256 matches)
