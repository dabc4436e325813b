"""A hostile or broken registry never stops a consumer, and instances never fence each other.

- A restarted consumer whose champion does not verify serves the newest earlier version that
  served and verifies; records that are not model versions (garbage bytes, a key that is not
  UTF-8) are skipped and logged, and `driftline models list` still reads the registry.
- With no servable version at all, a consumer waits, not ready, instead of exiting, and serves
  the first good champion that is published.
- Two exactly-once instances of one deployment on one host take distinct transactional ids:
  no fencing, 0 lost, 0 duplicated.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import msgspec
import pytest
from confluent_kafka import Producer

from driftline.schemas import codec
from driftline.schemas.contracts import MODEL_NAMES
from driftline.schemas.messages import InferenceResult, ModelVersion
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime import registry
from driftline.services.runtime.kafka import create_topics
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.simulator import sensors
from driftline.services.simulator.settings import SimulatorSettings
from tests.integration.kafka_io import drain
from tests.integration.test_hot_swap import Serving, republish

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NAME = MODEL_NAMES["sensor"]


def _raw(kafka: KafkaSettings, key: bytes, value: bytes) -> None:
    prod = Producer(kafka.client_config())
    prod.produce(kafka.topics.models_registry, key=key, value=value)
    assert prod.flush(10) == 0


def _served_versions(kafka: KafkaSettings, n: int) -> set[int]:
    sensors.run(SimulatorSettings(kafka=kafka, count=n, rate=5000, seed=3), progress=False)
    records = drain(kafka, kafka.topics.inference_results, expect=n)
    return {codec.decode(InferenceResult, m.value()).model_version for m in records}


def test_a_restart_after_a_bad_publish_serves_the_newest_version_that_verifies(
    kafka: KafkaSettings, sensor_champion: ModelVersion, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # Hostile records first: garbage under the model's key, a key that is not UTF-8.
    _raw(kafka, NAME.encode(), b"\x00\x01 not a model version")
    _raw(kafka, b"\xff\xfe\xfd", codec.encode(sensor_champion))
    # Then a champion the consumer cannot fetch (no s3fs here, or no such bucket).
    republish(kafka, sensor_champion, version=2, artifact_uri="s3://nowhere/insulator/v2.onnx")
    snapshot = registry.read_snapshot(kafka, kafka.topics.models_registry)  # `models list`
    assert snapshot.champions[NAME].version == 2
    assert snapshot.invalid == 2

    s = Serving(InferenceSettings(kafka=kafka, max_wait_ms=5))
    try:
        s.wait_for(lambda: s.swaps("ok") == 1)
        assert s.swaps("rejected", "fetch") == 1
        assert _served_versions(kafka, 100) == {1}
        # A later champion that fails while loading is refused too; v1 keeps serving.
        republish(kafka, sensor_champion, version=3, artifact_uri="nope://x/v3.onnx")
        s.wait_for(lambda: s.swaps("rejected", "fetch") == 2)
        assert s.thread.is_alive()
    finally:
        s.close()
    logged = caplog.text
    assert "not a model version" in logged
    assert "the newest earlier version that verifies" in logged


def test_with_no_servable_version_a_consumer_waits_and_serves_the_first_good_one(
    kafka: KafkaSettings, request: pytest.FixtureRequest
) -> None:
    create_topics(kafka)
    s = Serving(InferenceSettings(kafka=kafka, max_wait_ms=5, registry_timeout_s=2.0))
    try:
        time.sleep(5)  # past registry_timeout_s: the service used to exit here
        assert s.thread.is_alive(), s.errors
        assert s.swaps("ok") == 0
        good: ModelVersion = request.getfixturevalue("sensor_champion")  # published now
        s.wait_for(lambda: s.swaps("ok") == 1)
        bad = msgspec.structs.replace(good, version=7, artifact_uri=f"{good.artifact_uri}.gone")
        registry.publish(kafka, kafka.topics.models_registry, bad)
        s.wait_for(lambda: s.swaps("rejected", "fetch") == 1)
        assert _served_versions(kafka, 50) == {1}
    finally:
        s.close()


@pytest.mark.usefixtures("sensor_champion")
def test_two_exactly_once_instances_on_one_host_do_not_fence_each_other(
    kafka: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    n = 3000
    settings = InferenceSettings(kafka=kafka, exactly_once=True, max_batch=50, max_wait_ms=5)
    a, b = Serving(settings), Serving(settings)
    try:
        a.wait_for(lambda: a.swaps("ok") == 1)
        b.wait_for(lambda: b.swaps("ok") == 1)
        report = sensors.run(
            SimulatorSettings(kafka=kafka, count=n, rate=2000, assets=30, seed=4),
            progress=False,
            keep_truth=True,
        )
        records = drain(kafka, kafka.topics.inference_results, expect=n, timeout_s=120)
    finally:
        a.close()
        b.close()
    ids = Counter(codec.decode(InferenceResult, m.value()).event_id for m in records)
    assert set(ids) == {t.event_id for t in report.truth}
    assert max(ids.values()) == 1
    instances = {
        r.getMessage().rsplit(" ", 1)[-1]
        for r in caplog.records
        if r.getMessage().startswith("exactly-once as instance")
    }
    assert len(instances) == 2, instances
    # A rebalance may abort one transaction (ILLEGAL_GENERATION: rewound, nothing lost);
    # fencing would rebuild a producer and log it.
    fenced = [
        r.getMessage()
        for r in caplog.records
        if "fenc" in r.getMessage().lower() or "rebuilding the transactional" in r.getMessage()
    ]
    assert fenced == []


def _wait_serving(s: Serving) -> None:
    s.wait_for(lambda: s.swaps("ok") == 1)


def test_two_prefixed_deployments_on_one_broker_do_not_fence_each_other(
    kafka: KafkaSettings, sensor_champion: ModelVersion, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # A second deployment on the same cluster: its own prefix, topics and registry, the same
    # host name and the same (default) instance settings.
    other = kafka.model_copy(update={"topic_prefix": f"{kafka.topic_prefix}other."})
    create_topics(other)
    registry.publish(other, other.topics.models_registry, sensor_champion)
    n = 1500
    deployments = [
        Serving(InferenceSettings(kafka=k, exactly_once=True, max_batch=50, max_wait_ms=5))
        for k in (kafka, other)
    ]
    try:
        for s in deployments:
            _wait_serving(s)
        reports = [
            sensors.run(
                SimulatorSettings(kafka=k, count=n, rate=2000, assets=20, seed=6),
                progress=False,
                keep_truth=True,
            )
            for k in (kafka, other)
        ]
        for k, report in zip((kafka, other), reports, strict=True):
            records = drain(k, k.topics.inference_results, expect=n, timeout_s=120)
            ids = Counter(codec.decode(InferenceResult, m.value()).event_id for m in records)
            assert set(ids) == {t.event_id for t in report.truth}, "lost events"
            assert max(ids.values()) == 1, "duplicated results"
    finally:
        for s in deployments:
            s.close()
    groups = {
        InferenceSettings(kafka=k, exactly_once=True).effective_group_id for k in (kafka, other)
    }
    assert len(groups) == 2
    fenced = [
        r.getMessage()
        for r in caplog.records
        if "fenc" in r.getMessage().lower() or "rebuilding the transactional" in r.getMessage()
    ]
    assert fenced == []
