"""Sensor windows in, one InferenceResult per event out, through the real broker."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.avro import encode_record
from driftline.schemas.messages import InferenceResult, ModelVersion
from driftline.services.inference import service
from driftline.services.inference.handler import BatchStats
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.shutdown import StopFlag
from driftline.services.simulator import sensors
from driftline.services.simulator.settings import SimulatorSettings
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


class RunningConsumer:
    def __init__(self, settings: InferenceSettings) -> None:
        self.stop = StopFlag()
        self.batches: list[BatchStats] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.settings = settings

    def _run(self) -> None:
        try:
            service.run(self.settings, self.stop, self.batches.append)
        except BaseException as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "consumer did not stop within 30s of being asked"
        assert not self.errors, self.errors


@pytest.fixture
def consumer(
    kafka: KafkaSettings,
    sensor_champion: ModelVersion,  # noqa: ARG001  (published first; marks cannot apply to fixtures)
) -> Iterator[RunningConsumer]:
    running = RunningConsumer(
        InferenceSettings(kafka=kafka, max_batch=128, max_wait_ms=20, registry_timeout_s=20)
    )
    running.thread.start()
    yield running
    running.close()


def test_every_event_gets_exactly_one_result_with_the_model_version(
    kafka: KafkaSettings, sensor_champion: ModelVersion, consumer: RunningConsumer
) -> None:
    n = 3000
    report = sensors.run(
        SimulatorSettings(kafka=kafka, count=n, rate=5000, assets=40, seed=3),
        progress=False,
        keep_truth=True,
    )
    assert report.sent == n
    records = drain(kafka, kafka.topics.inference_results, expect=n)
    results = [codec.decode(InferenceResult, m.value()) for m in records]
    counts = Counter(r.event_id for r in results)
    sent_ids = {t.event_id for t in report.truth}
    assert set(counts) == sent_ids, "every event scored, and nothing else"
    assert max(counts.values()) == 1, "no event scored twice"
    assert len(results) == n
    assert {(r.model_name, r.model_version) for r in results} == {
        (sensor_champion.name, sensor_champion.version)
    }
    truth = {t.event_id: t for t in report.truth}
    for r in results[:50]:
        assert r.asset_id == truth[r.event_id].asset_id
        probs = r.probability_array()
        assert probs.shape == (len(sensor_champion.classes),)
        assert abs(float(probs.sum()) - 1.0) < 1e-4
        assert r.predicted_class == sensor_champion.classes[int(probs.argmax())]
        assert r.confidence == pytest.approx(float(probs.max()))
    accuracy = np.mean([r.predicted_class == truth[r.event_id].true_class for r in results])
    assert accuracy > 0.7, f"the served model should score far above chance, got {accuracy:.2f}"
    assert sum(b.scored for b in consumer.batches) == n
    # Results keep the asset as their key, so one asset's results stay in order on one partition.
    assert all(
        m.key() == codec.decode(InferenceResult, m.value()).asset_id.encode() for m in records
    )


def _window_record(event_id: str, samples: np.ndarray) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": event_id,
        "asset_id": "insulator-00007",
        "sensor_id": "s",
        "event_time_ms": 1_700_000_000_000,
        "sample_rate_hz": 1.0,
        "channels": ["a", "b", "c", "d"][: samples.shape[0]],
        "n_samples": samples.shape[1],
        "samples": samples.astype("<f4").tobytes(),
    }


@pytest.mark.usefixtures("consumer")
def test_bad_records_go_to_the_dlq_and_good_ones_keep_flowing(
    kafka: KafkaSettings,
) -> None:
    rng = np.random.default_rng(0)
    ok = rng.random((4, 64)) + 1

    def avro(event_id: str, samples: np.ndarray) -> bytes:
        return encode_record("SensorWindow", _window_record(event_id, samples))

    nan = ok.copy()
    nan[1, 3] = np.nan
    json_ok = codec._JSON_ENCODER.encode(
        {**_window_record("good-json", ok), "samples": ok.tolist()}
    )
    avro_ct = [(h.CONTENT_TYPE, b"application/avro")]
    json_ct = [(h.CONTENT_TYPE, b"application/json")]
    sends: list[tuple[bytes | None, list[tuple[str, str | bytes | None]], str | None]] = [
        (avro("good-1", ok), avro_ct, None),
        (b"\x02\x99garbage", avro_ct, dl.UNDECODABLE),
        (avro("bad-nan", nan), avro_ct, dl.NON_FINITE),
        (avro("bad-shape", ok[:3]), avro_ct, dl.BAD_SHAPE),
        (None, avro_ct, dl.EMPTY_VALUE),
        (avro("bad-ctype", ok), [(h.CONTENT_TYPE, b"text/csv")], dl.UNKNOWN_CONTENT_TYPE),
        (b'{"event_id": 12}', json_ct, dl.SCHEMA_INVALID),
        (json_ok, json_ct, None),
        (avro("good-2", ok), [], None),
    ]
    prod = producer(kafka)
    tracker = DeliveryTracker()
    # One key, so every record lands on one partition, in order: the good ones after the bad
    # ones prove a bad record never blocks its partition.
    for value, hdrs, _ in sends:
        prod.produce(
            kafka.topics.sensor_windows,
            key=b"insulator-00007",
            value=value,
            headers=hdrs,
            on_delivery=tracker,
        )
    flush_or_raise(prod, tracker)

    results = drain(kafka, kafka.topics.inference_results, expect=3)
    assert sorted(codec.decode(InferenceResult, m.value()).event_id for m in results) == [
        "good-1",
        "good-2",
        "good-json",
    ]
    letters = drain(kafka, kafka.topics.dlq("sensor.windows"), expect=6)
    assert len(letters) == 6
    by_offset = sorted(
        letters, key=lambda m: dl.from_headers(m.headers(), None, None).source_offset
    )
    expected_bad = [(v, r) for v, _, r in sends if r is not None]
    for msg, (value, reason) in zip(by_offset, expected_bad, strict=True):
        env = dl.from_headers(msg.headers(), msg.key(), msg.value())
        assert env.error_class == reason
        assert env.source_topic == kafka.topics.sensor_windows
        assert env.service == "inference"
        assert env.error_message
        assert msg.value() == value, "the DLQ keeps the original bytes for replay"
        assert msg.key() == b"insulator-00007"
