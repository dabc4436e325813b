"""The join's router on the real broker: every input, result and label becomes one note on the
join topic, in the partition of its asset; bad labels are dead-lettered; offsets commit."""

from __future__ import annotations

import time

import numpy as np
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.contracts import INSULATOR_CLASSES, SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.schemas.messages import InferenceResult, Label, SensorWindow
from driftline.services.features import joinrecords as jr
from driftline.services.features.joinkeys import join_partition
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.router import RouterThread
from driftline.services.features.settings import FeaturesSettings
from driftline.services.runtime.kafka import admin, producer
from driftline.services.runtime.settings import KafkaSettings
from tests.integration.kafka_io import drain

N = 60  # events, each with an input and a result; every third one labelled
JOIN_PARTITIONS = 6


def _window(i: int) -> bytes:
    samples = np.random.default_rng(i).normal(size=(len(SENSOR_CHANNELS), SENSOR_SAMPLES))
    return codec.encode(
        SensorWindow(
            event_id=f"e{i}",
            asset_id=f"asset-{i % 7}",
            sensor_id="s",
            event_time_ms=1_700_000_000_000 + i,
            sample_rate_hz=1.0,
            channels=list(SENSOR_CHANNELS),
            n_samples=SENSOR_SAMPLES,
            samples=samples.astype("<f4").tobytes(),
        )
    )


def _result(i: int) -> bytes:
    return codec.encode(
        InferenceResult(
            event_id=f"e{i}",
            asset_id=f"asset-{i % 7}",
            modality="sensor",
            model_name="insulator-sensor",
            model_version=1,
            classes=list(INSULATOR_CLASSES),
            probabilities=np.full(4, 0.25, "<f4").tobytes(),
            predicted_class="healthy",
            confidence=0.25,
            event_time_ms=1_700_000_000_000 + i,
            scored_time_ms=1_700_000_000_100 + i,
        )
    )


def _label(i: int) -> bytes:
    return codec.encode(
        Label(
            event_id=f"e{i}",
            asset_id=f"asset-{i % 7}",
            true_class="healthy",
            source="t",
            label_time_ms=1_700_000_001_000 + i,
        )
    )


def test_router_puts_every_record_on_its_assets_join_partition_once(
    kafka: KafkaSettings,
) -> None:
    settings = FeaturesSettings(kafka=kafka, join_partitions=JOIN_PARTITIONS)
    join_topic = f"{settings.faust_app_id}-join"
    client = admin(kafka)
    for future in client.create_topics([NewTopic(join_topic, JOIN_PARTITIONS, 1)]).values():
        future.result(timeout=30)
    t = kafka.topics
    prod = producer(kafka)
    labelled = [i for i in range(N) if i % 3 == 0]
    for i in range(N):
        key = f"asset-{i % 7}"
        prod.produce(t.sensor_windows, key=key, value=_window(i), headers=h.AVRO)
        prod.produce(t.inference_results, key=key, value=_result(i), headers=h.AVRO)
    for i in labelled:
        prod.produce(t.feedback_labels, key=f"asset-{i % 7}", value=_label(i), headers=h.AVRO)
    # Two labels the join cannot use: no asset id, and bytes that are no label at all.
    no_asset = Label(event_id="x", true_class="healthy", source="t", label_time_ms=1)
    prod.produce(t.feedback_labels, key="x", value=codec.encode(no_asset), headers=h.AVRO)
    prod.produce(t.feedback_labels, key="y", value=b"\x00not avro", headers=h.AVRO)
    # And an input that is not one: skipped (the inference consumer dead-letters it).
    prod.produce(t.sensor_windows, key="z", value=b"garbage", headers=h.AVRO)
    assert prod.flush(30) == 0

    metrics = FeaturesMetrics(CollectorRegistry())
    failed: list[bool] = []
    router = RouterThread(settings, metrics, on_failure=lambda: failed.append(True))
    router.start()
    try:
        notes = drain(kafka, join_topic, expect=2 * N + len(labelled), timeout_s=90)
        letters = drain(kafka, t.dlq("feedback.labels"), expect=2, timeout_s=30)
        group = f"{settings.faust_app_id}-router"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _committed(kafka, group) < 2 * N + len(labelled) + 3:
            time.sleep(0.5)
        committed = _committed(kafka, group)
    finally:
        router.stop()
    assert not failed
    kinds: dict[str, list[str]] = {"input": [], "result": [], "label": []}
    for m in notes:
        kind = dict(h.header_items(m.headers()))[jr.JOIN_KIND]
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        asset = (m.key() or b"").decode()
        assert m.partition() == join_partition(asset, JOIN_PARTITIONS), (asset, m.partition())
        if kind == "input":
            kinds[kind].append(jr.INPUT_NOTES.decode(m.value() or b"").event_id)
        elif kind == "result":
            kinds[kind].append(jr.RESULT_NOTES.decode(m.value() or b"").event_id)
        else:
            kinds[kind].append(codec.decode(Label, m.value()).event_id or "")
    assert sorted(kinds["input"]) == sorted(f"e{i}" for i in range(N))
    assert sorted(kinds["result"]) == sorted(f"e{i}" for i in range(N))
    assert sorted(kinds["label"]) == sorted(f"e{i}" for i in labelled)
    sources = sorted(
        (dict(h.header_items(m.headers())).get(h.DLQ_ERROR_CLASS), m.key()) for m in letters
    )
    assert [key for _, key in sources] == [b"x", b"y"]
    assert sources[0][0] == dl.SCHEMA_INVALID.encode()  # no asset id: cannot be routed
    # Every consumed record is committed: inputs, results, labels, and the three refused.
    assert committed == 2 * N + len(labelled) + 3


def _committed(kafka: KafkaSettings, group: str) -> int:
    consumer = Consumer(kafka.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        t = kafka.topics
        parts = [
            TopicPartition(topic, p)
            for topic in (t.sensor_windows, t.camera_images, t.inference_results, t.feedback_labels)
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ]
        return sum(max(0, tp.offset) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()
