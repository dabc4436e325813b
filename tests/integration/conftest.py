"""The real Kafka and Redis, started once per test session on free ports, and per-test topics.

Set DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS and DRIFTLINE_REDIS_URL to reuse running services.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from driftline.services.localstack import LocalStack, StackPorts, free_port
from driftline.services.runtime.kafka import admin, create_topics
from driftline.services.runtime.settings import KafkaSettings

TEST_PARTITIONS = 3


@dataclass(frozen=True)
class Endpoints:
    bootstrap_servers: str
    redis_url: str


def _free_ports() -> StackPorts:
    while True:
        ports = StackPorts(kafka=free_port(), controller=free_port(), redis=free_port())
        if len({ports.kafka, ports.controller, ports.redis}) == 3:
            return ports


def cluster_ports() -> StackPorts:
    """Free ports for a three-node cluster (LocalStack) and its Redis."""
    while True:
        kafka = [free_port() for _ in range(3)]
        controllers = [free_port() for _ in range(3)]
        redis = free_port()
        if len({*kafka, *controllers, redis}) == 7:
            return StackPorts(
                kafka=kafka[0],
                controller=controllers[0],
                redis=redis,
                more_kafka=tuple(kafka[1:]),
                more_controllers=tuple(controllers[1:]),
            )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A real three-node Kafka cluster and a Redis, started once for every test that asks
    (tests/integration/test_cluster*.py); `stack.up()` restarts a node a test killed."""
    stack = LocalStack(tmp_path_factory.mktemp("cluster"), cluster_ports())
    stack.up(timeout_s=240)
    try:
        yield stack
    finally:
        pids = [pid for pid in stack.status().kafka_pids if pid is not None]
        stack.down()
        left = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        assert not left, f"Kafka nodes still running after down: {left}"


@pytest.fixture(scope="session")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    bootstrap = os.environ.get("DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS")
    redis_url = os.environ.get("DRIFTLINE_REDIS_URL")
    if bootstrap and redis_url:
        yield Endpoints(bootstrap, redis_url)
        return
    stack = LocalStack(Path(tmp_path_factory.mktemp("stack")), _free_ports())
    status = stack.up()
    try:
        yield Endpoints(bootstrap or status.bootstrap_servers, redis_url or status.redis_url)
    finally:
        stack.down()


@pytest.fixture
def kafka(endpoints: Endpoints) -> Iterator[KafkaSettings]:
    """Kafka settings with a topic prefix of this test's own, every topic created."""
    settings = KafkaSettings(
        bootstrap_servers=endpoints.bootstrap_servers, topic_prefix=f"t{uuid.uuid4().hex[:10]}."
    )
    create_topics(settings, partitions=TEST_PARTITIONS)
    yield settings
    client = admin(settings)
    mine = [t for t in client.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)]
    if mine:
        for future in client.delete_topics(mine, operation_timeout=30).values():
            future.result(timeout=30)


@pytest.fixture(scope="session")
def tiny_sensor_model() -> object:
    """A small SensorCNN trained for a few seconds on simulated windows (built, not downloaded)."""
    from driftline.services.simulator.fleet import labelled_dataset
    from driftline.trainer.bootstrap import train_sensor_model
    from driftline.trainer.fit import FitConfig

    x, y = labelled_dataset(2400, seed=11)
    return train_sensor_model(x, y, FitConfig(epochs=3, batch_size=128, seed=11))


@pytest.fixture
def sensor_champion(kafka: KafkaSettings, tiny_sensor_model: object, tmp_path: Path) -> object:
    """Version 1 of insulator-sensor, published to this test's registry topic."""
    from driftline.schemas.contracts import INSULATOR_CLASSES, MODEL_NAMES
    from driftline.schemas.messages import STATUS_CHAMPION, Lineage
    from driftline.trainer.bootstrap import TrainedModel
    from driftline.trainer.publish import publish_version

    assert isinstance(tiny_sensor_model, TrainedModel)
    return publish_version(
        kafka=kafka,
        artifact_root=(tmp_path / "artifacts").as_uri(),
        name=MODEL_NAMES["sensor"],
        version=1,
        modality="sensor",
        exported=tiny_sensor_model.exported,
        model=tiny_sensor_model.model,
        classes=list(INSULATOR_CLASSES),
        metrics={"holdout_macro_f1": tiny_sensor_model.report.holdout_macro_f1},
        lineage=Lineage(source="test"),
        status=STATUS_CHAMPION,
    )
