"""The soak's probes on a real broker: lag per group from committed offsets, results by id."""

from __future__ import annotations

import time

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from driftline.schemas import codec
from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.schemas.messages import InferenceResult
from driftline.services.bench.soakprobe import LagProbe, ResultsWatch, rss_mib
from driftline.services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from driftline.services.runtime.settings import KafkaSettings

pytestmark = pytest.mark.integration


def _result(event_id: str, event_ms: int, scored_ms: int) -> bytes:
    probs = np.array([0.7, 0.1, 0.1, 0.1], dtype="<f4")
    return codec.encode(
        InferenceResult(
            event_id=event_id,
            asset_id="a1",
            modality="sensor",
            model_name="insulator-sensor",
            model_version=1,
            classes=list(INSULATOR_CLASSES),
            probabilities=probs.tobytes(),
            predicted_class=INSULATOR_CLASSES[0],
            confidence=0.7,
            event_time_ms=event_ms,
            scored_time_ms=scored_ms,
        )
    )


def _produce(kafka: KafkaSettings, topic: str, values: list[bytes], partition: int = 0) -> None:
    prod = producer(kafka)
    tracker = DeliveryTracker()
    for v in values:
        prod.produce(topic, value=v, key=b"a1", partition=partition, on_delivery=tracker)
    flush_or_raise(prod, tracker, timeout_s=30)


def test_lag_is_the_records_a_group_has_not_committed_per_topic(kafka: KafkaSettings) -> None:
    topic = kafka.topics.sensor_windows
    _produce(kafka, topic, [b"x"] * 100)
    group = f"{kafka.topic_prefix}driftline-inference-sensor"
    committer = Consumer(kafka.client_config(**{"group.id": group}))
    try:
        committer.commit(offsets=[TopicPartition(topic, 0, 40)], asynchronous=False)
    finally:
        committer.close()
    lag = LagProbe(kafka).sample()
    # Groups of other prefixes (other tests) and groups without commits are not ours to show.
    assert lag == {"driftline-inference-sensor": {"sensor.windows": 60}}


def test_results_are_counted_by_event_id_and_timed_by_when_they_were_scored(
    kafka: KafkaSettings,
) -> None:
    t0 = int(time.time() * 1000)
    watch = ResultsWatch(kafka, started_ms=t0).start()
    for i in range(3):
        watch.record_sent(f"e{i}", "sensor", INSULATOR_CLASSES[0], 0.0)
    # e0 once, e1 twice (a duplicate), e2 never (lost); scored 1 s and 12 s into the stream.
    _produce(
        kafka,
        kafka.topics.inference_results,
        [
            _result("e0", t0 + 900, t0 + 1000),
            _result("e1", t0 + 11_750, t0 + 12_000),
            _result("e1", t0 + 11_750, t0 + 12_100),
        ],
    )
    deadline = time.monotonic() + 60
    while watch.counts()[3] < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    watch.join()
    assert watch.errors == []
    assert watch.counts() == (3, 2, 1, 1)  # sent, scored, lost, duplicated
    scored_at, latency = watch.latencies()
    assert scored_at.tolist() == [1.0, 12.0, 12.1]
    assert latency.tolist() == [100.0, 250.0, 350.0]


def test_resident_memory_is_read_from_proc_and_none_for_a_process_gone() -> None:
    import os

    mine = rss_mib(os.getpid())
    assert mine is not None
    assert mine > 10
    assert rss_mib(2**22 + 1) is None  # above the kernel's pid limit: never a process
