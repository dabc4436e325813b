"""The inference handler without a broker: records in, results and dead letters out, offsets.

The handler is what `driftline infer` runs inside the shared batch loop; here it gets
confluent-kafka Message objects built by hand, a model runner that is plain numpy, and the
in-memory Delivery, so every decision of a batch can be read back.
"""

from __future__ import annotations

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
from confluent_kafka import KafkaError, Message
from prometheus_client import CollectorRegistry

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.contracts import SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.schemas.messages import InferenceResult, Lineage, ModelVersion
from driftline.schemas.topics import SENSOR_WINDOWS
from driftline.services.inference.handler import InferenceHandler
from driftline.services.inference.inmemory import InMemoryDelivery
from driftline.services.inference.metrics import InferenceMetrics
from driftline.services.inference.service import decoder_for
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.batchloop import RewindBatch
from driftline.services.runtime.settings import KafkaSettings
from tests.unit.test_codec import sensor_window

CLASSES = ["healthy", "contaminated", "cracked", "flashover"]
TOPIC = "t1.sensor.windows"


def version(v: int = 3) -> ModelVersion:
    return ModelVersion(
        name="insulator-sensor",
        version=v,
        modality="sensor",
        artifact_uri="file:///m.onnx",
        sha256="0" * 64,
        inputs=[],
        outputs=[],
        classes=CLASSES,
        lineage=Lineage(source="test"),
        status="champion",
        created_time_ms=1,
    )


class Runner:
    """Scores by the mean of channel 0: class index = mean mod 4, as one-hot-ish rows."""

    def __init__(self, mv: ModelVersion, poison: float | None = None) -> None:
        self.version = mv
        self.poison = poison
        self.calls = 0

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.calls += 1
        means = batch[:, 0, :].mean(axis=1)
        if self.poison is not None and np.isclose(means, self.poison).any():
            raise RuntimeError("this model cannot score that input")
        out = np.full((len(batch), len(CLASSES)), 0.1, dtype=np.float32)
        out[np.arange(len(batch)), means.astype(np.int64) % len(CLASSES)] = 0.7
        out[np.isnan(means)] = np.nan
        return out


class Slot:
    def __init__(self, runner: Runner | None) -> None:
        self.model = runner


def window_bytes(event_id: str, level: float) -> bytes:
    """A sensor window of the served shape whose every sample is `level`."""
    samples = np.full((len(SENSOR_CHANNELS), SENSOR_SAMPLES), level, dtype="<f4")
    window = sensor_window(event_id, channels=len(SENSOR_CHANNELS), n=SENSOR_SAMPLES)
    return codec.encode(msgspec.structs.replace(window, samples=samples.tobytes()))


def msg(offset: int, value: bytes | None, partition: int = 0) -> Message:
    return Message(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        key=b"insulator-00001",
        value=value,
        headers=list(h.AVRO),
        error=None,
        timestamp=(1, 1_700_000_000_000),
    )


def handler(
    runner: Runner | None, delivery: InMemoryDelivery
) -> tuple[InferenceHandler, InferenceSettings]:
    settings = InferenceSettings(kafka=KafkaSettings(topic_prefix="t1."), modality="sensor")
    source, decoder = decoder_for(settings)
    assert source == SENSOR_WINDOWS
    metrics = InferenceMetrics(CollectorRegistry())
    return InferenceHandler(settings, source, decoder, Slot(runner), metrics, delivery), settings


def results(delivery: InMemoryDelivery, settings: InferenceSettings) -> list[InferenceResult]:
    topic = settings.kafka.topics.inference_results
    return [codec.decode(InferenceResult, v) for _k, v, _h in delivery.on(topic) if v]


def test_a_batch_is_scored_delivered_and_committed_past_its_last_offset() -> None:
    mem = InMemoryDelivery()
    hd, settings = handler(Runner(version(3)), mem)
    msgs = [msg(10 + i, window_bytes(f"e-{i}", float(i))) for i in range(6)]
    stats = hd.handle(msgs)
    assert (stats.consumed, stats.scored, stats.dead_lettered, stats.model_version) == (6, 6, 0, 3)
    got = results(mem, settings)
    assert [r.event_id for r in got] == [f"e-{i}" for i in range(6)]
    assert [r.predicted_class for r in got] == [CLASSES[i % 4] for i in range(6)]
    assert all(r.model_version == 3 and r.modality == "sensor" for r in got)
    assert all(np.isclose(r.confidence, 0.7) for r in got)
    assert [(tp.topic, tp.partition, tp.offset) for tp in mem.commits[-1]] == [(TOPIC, 0, 16)]


def test_a_batch_over_partitions_commits_and_rewinds_each_and_marks_its_stages() -> None:
    mem = InMemoryDelivery()
    hd, _ = handler(Runner(version(1)), mem)
    # Partitions interleaved, and one out of order, as a rewind can leave them.
    layout = [(0, 7), (2, 40), (0, 8), (2, 41), (0, 5), (1, 3)]
    msgs = [msg(o, window_bytes(f"e-{i}", 1.0), partition=p) for i, (p, o) in enumerate(layout)]
    stats = hd.handle(msgs)
    assert sorted((tp.partition, tp.offset) for tp in mem.commits[-1]) == [(0, 9), (1, 4), (2, 42)]
    assert stats.marks is not None
    assert stats.marks.spans == {(TOPIC, 0): (5, 9), (TOPIC, 1): (3, 4), (TOPIC, 2): (40, 42)}
    m = stats.marks
    assert m.taken_s <= m.scored_s <= m.produced_s <= m.committed_s


def test_undecodable_records_are_dead_lettered_and_still_committed() -> None:
    mem = InMemoryDelivery()
    hd, settings = handler(Runner(version()), mem)
    msgs = [msg(0, window_bytes("e-0", 1.0)), msg(1, b"\x00garbage"), msg(2, None)]
    stats = hd.handle(msgs)
    assert (stats.scored, stats.dead_lettered) == (1, 2)
    dlq = mem.on(settings.kafka.topics.dlq(SENSOR_WINDOWS))
    assert [v for _k, v, _h in dlq] == [b"\x00garbage", None]
    letters = [dl.from_headers(hs, k if isinstance(k, bytes) else None, v) for k, v, hs in dlq]
    assert [(x.source_topic, x.source_offset) for x in letters] == [(TOPIC, 1), (TOPIC, 2)]
    assert mem.commits[-1][0].offset == 3


def test_an_event_the_model_cannot_score_is_split_out_and_dead_lettered() -> None:
    mem = InMemoryDelivery()
    runner = Runner(version(), poison=5.0)
    hd, settings = handler(runner, mem)
    msgs = [msg(i, window_bytes(f"e-{i}", float(i))) for i in range(8)]
    stats = hd.handle(msgs)
    assert (stats.scored, stats.dead_lettered) == (7, 1)
    assert "e-5" not in {r.event_id for r in results(mem, settings)}
    (letter,) = mem.on(settings.kafka.topics.dlq(SENSOR_WINDOWS))
    envelope = dl.from_headers(letter[2], None, letter[1])
    assert (envelope.error_class, envelope.source_offset) == (dl.SCORING_FAILED, 5)
    assert runner.calls > 2  # the whole batch, then halves down to the one that fails


def test_non_finite_scores_are_no_scores() -> None:
    class NaNRunner(Runner):
        def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            out = super().predict(batch)
            out[1] = np.nan
            return out

    mem = InMemoryDelivery()
    hd, settings = handler(NaNRunner(version()), mem)
    stats = hd.handle([msg(i, window_bytes(f"e-{i}", 1.0)) for i in range(3)])
    assert (stats.scored, stats.dead_lettered) == (2, 1)
    assert [r.event_id for r in results(mem, settings)] == ["e-0", "e-2"]


def test_a_failed_commit_leaves_the_batch_uncommitted_for_the_loop_to_rewind() -> None:
    mem = InMemoryDelivery(fail_commits=1)
    hd, settings = handler(Runner(version()), mem)
    msgs = [msg(40 + i, window_bytes(f"e-{i}", 1.0), partition=2) for i in range(3)]
    with pytest.raises(RewindBatch) as caught:
        hd.handle(msgs)
    assert caught.value.rewind == {(TOPIC, 2): 40}
    assert mem.commits == []
    assert results(mem, settings) == []
    hd.handle(msgs)  # the replay
    assert [r.event_id for r in results(mem, settings)] == ["e-0", "e-1", "e-2"]
    assert mem.commits[-1][0].offset == 43


def test_consumer_errors_are_skipped_and_a_swap_lands_between_batches() -> None:
    mem = InMemoryDelivery()
    slot_runner = Runner(version(3))
    hd, settings = handler(slot_runner, mem)
    error = Message(topic=TOPIC, partition=0, offset=-1, error=KafkaError(KafkaError._TRANSPORT))
    assert hd.handle([error]).consumed == 1
    assert mem.commits == []
    hd.handle([msg(0, window_bytes("e-0", 1.0))])
    hd.models = Slot(Runner(version(4)))
    hd.handle([msg(1, window_bytes("e-1", 1.0))])
    assert [r.model_version for r in results(mem, settings)] == [3, 4]


def test_no_model_is_an_error_not_a_silent_skip() -> None:
    hd, _ = handler(None, InMemoryDelivery())
    with pytest.raises(RuntimeError, match="model"):
        hd.handle([msg(0, window_bytes("e-0", 1.0))])
