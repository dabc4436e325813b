"""The features pipeline in process, with its in-memory twins: join, statistics, Redis outages.

Every test runs twice: with the join's tables as dicts and on disk (RocksDB databases in a
temporary directory, as the app has them on rocksdb://, less the changelog).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from typing_extensions import override

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.contracts import INSULATOR_CLASSES, SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.schemas.messages import (
    CameraImage,
    InferenceResult,
    Label,
    LabelledWindow,
    SensorWindow,
)
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.pipeline import FeaturesPipeline, PipelineTables
from driftline.services.features.readback import InputReader, MemoryInputReader
from driftline.services.features.records import Outbox, RawRecord
from driftline.services.features.rocks import MIB, DiskTable, LocalDatabases, RocksOptions
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.store import MemoryFeatureStore
from driftline.services.features.tables import KEY_SEP, DictTable, StateTable, key_partition
from driftline.services.runtime.settings import KafkaSettings

AVRO: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]
BASE = 1_700_000_040_000 - 1_700_000_040_000 % 60_000
MODEL = "insulator-sensor"


JoinTable = Callable[[bool], StateTable]  # (keyed by asset) -> a new table
_join_table: list[JoinTable] = []


@pytest.fixture(autouse=True, params=["dict", "disk"])
def join_tables(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """The join's tables of every pipeline a test builds: dicts, or RocksDB on disk."""
    opened: list[LocalDatabases] = []
    options = RocksOptions(8 * MIB)

    def on_disk(by_asset: bool) -> StateTable:
        dbs = LocalDatabases(tmp_path / f"table-{len(opened)}", options)
        opened.append(dbs)
        partitions = FeaturesSettings().join_partitions

        def partition_of(key: bytes) -> int:
            return key_partition(key.split(KEY_SEP, 1)[0], partitions)

        return DiskTable(dbs, partitions, partition_of=partition_of if by_asset else None)

    _join_table.append((lambda _by_asset: DictTable()) if request.param == "dict" else on_disk)
    yield
    _join_table.pop()
    for dbs in opened:
        dbs.close()


@dataclass
class ListOutbox(Outbox):
    sent: list[tuple[str, bytes | None, bytes, h.HeaderList]] = field(default_factory=list)

    @override
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: h.HeaderList,
        *,
        wait: bool = False,
    ) -> None:
        self.sent.append((topic, key, value, list(headers)))

    def take(self, topic: str) -> list[RawRecord]:
        out = [
            RawRecord(t, 0, i, k, v, hd) for i, (t, k, v, hd) in enumerate(self.sent) if t == topic
        ]
        self.sent = [s for s in self.sent if s[0] != topic]
        return out


def _settings(**overrides: object) -> FeaturesSettings:
    base: dict[str, object] = {
        "kafka": KafkaSettings(topic_prefix="t."),
        "redis_key_prefix": "p:",
        "label_wait_s": 0,
        "join_retention_s": 3600,
        "allowed_lateness_s": 120,
    }
    base.update(overrides)
    return FeaturesSettings.model_validate(base)


def _pipeline(
    settings: FeaturesSettings,
    store: MemoryFeatureStore | None = None,
    *,
    join: bool = True,
    outbox: ListOutbox | None = None,
    reader: InputReader | None = None,
) -> tuple[FeaturesPipeline, ListOutbox, MemoryFeatureStore]:
    """A pipeline on in-memory tables; a restarted worker passes the first one's Kafka."""
    outbox = outbox or ListOutbox()
    store = store or MemoryFeatureStore()
    tables = PipelineTables(stats=DictTable(), accuracy=DictTable())
    if join:
        table = _join_table[-1] if _join_table else (lambda _by_asset: DictTable())
        tables.states, tables.parked, tables.index = table(True), table(True), table(False)
    pipeline = FeaturesPipeline(
        settings,
        FeaturesMetrics(CollectorRegistry()),
        store,
        outbox,
        tables,
        reader=reader if reader is not None else MemoryInputReader(),
    )
    return pipeline, outbox, store


async def _inputs(p: FeaturesPipeline, records: list[RawRecord]) -> None:
    """Inputs as Kafka holds them (the join reads them back from there) and as consumed."""
    assert isinstance(p.reader, MemoryInputReader)
    for rec in records:
        p.reader.put((rec.topic, rec.partition, rec.offset), rec.value, rec.headers)
    await p.on_inputs(records)


def _window(i: int, t: int) -> SensorWindow:
    rng = np.random.default_rng(i)
    samples = rng.normal(size=(len(SENSOR_CHANNELS), SENSOR_SAMPLES)).astype("<f4")
    return SensorWindow(
        event_id=f"e{i}",
        asset_id=f"a{i % 3}",
        sensor_id="s",
        event_time_ms=t,
        sample_rate_hz=1.0,
        channels=list(SENSOR_CHANNELS),
        n_samples=SENSOR_SAMPLES,
        samples=samples.tobytes(),
    )


def _result(i: int, t: int, predicted: str, confidence: float, version: int = 1) -> InferenceResult:
    return InferenceResult(
        event_id=f"e{i}",
        asset_id=f"a{i % 3}",
        modality="sensor",
        model_name=MODEL,
        model_version=version,
        classes=list(INSULATOR_CLASSES),
        probabilities=np.zeros(4, "<f4").tobytes(),
        predicted_class=predicted,
        confidence=confidence,
        event_time_ms=t,
        scored_time_ms=t + 5,
    )


def _records(
    topic: str, values: Iterable[bytes], partition: int = 0, start: int = 0
) -> list[RawRecord]:
    return [RawRecord(topic, partition, start + i, b"k", v, AVRO) for i, v in enumerate(values)]


def _label(event_id: str, true_class: str, at: int, asset_id: str | None = None) -> bytes:
    if asset_id is None and event_id[1:].isdigit():
        asset_id = f"a{int(event_id[1:]) % 3}"  # as _window assigns them
    return codec.encode(
        Label(
            event_id=event_id,
            true_class=true_class,
            source="t",
            label_time_ms=at,
            asset_id=asset_id or "a0",
        )
    )


def _inspection(asset_id: str, true_class: str, at: int, lookback_ms: int) -> bytes:
    return codec.encode(
        Label(
            true_class=true_class,
            source="inspection",
            label_time_ms=at,
            asset_id=asset_id,
            lookback_ms=lookback_ms,
        )
    )


def _windows_out(outbox: ListOutbox, topic: str) -> list[LabelledWindow]:
    return [codec.decode(LabelledWindow, v) for t, _, v, _ in outbox.sent if t == topic]


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _join_all(p: FeaturesPipeline, outbox: ListOutbox) -> None:
    await p.on_join(outbox.take(p.join_topic))


def test_the_join_emits_once_and_dead_letters_unknown_and_expired_labels() -> None:
    s = _settings()
    p, outbox, _ = _pipeline(s)
    topics = s.kafka.topics
    windows = [_window(i, BASE + i * 1000) for i in range(10)]
    inputs = [codec.encode(w) for w in windows]
    results = [
        codec.encode(_result(i, w.event_time_ms, "healthy" if i < 6 else "cracked", 0.9))
        for i, w in enumerate(windows)
    ]

    async def scenario() -> None:
        await _inputs(p, _records(topics.sensor_windows, inputs))
        await p.on_results(_records(topics.inference_results, results), forward=True)
        await _join_all(p, outbox)
        labels = [_label(f"e{i}", "healthy", BASE + 60_000) for i in range(10)]
        labels += [_label("e0", "healthy", BASE + 61_000), _label("e1", "cracked", BASE + 61_000)]
        labels += [_label("ghost", "healthy", BASE)]
        labels += [_label("e9", "healthy", BASE + 9000 + 3_600_001)]  # dup of e9, but later
        await p.on_labels(_records(topics.feedback_labels, labels))
        await _join_all(p, outbox)

    _run(scenario())
    emitted = [
        codec.decode(LabelledWindow, v)
        for t, _, v, _ in outbox.sent
        if t == topics.training_windows
    ]
    assert sorted(w.event_id for w in emitted) == [f"e{i}" for i in range(10)]
    by_id = {w.event_id: w for w in emitted}
    assert by_id["e3"].input == inputs[3]
    assert (by_id["e7"].predicted_class, by_id["e7"].model_version) == ("cracked", 1)
    dlq = [(v, dict(hd)) for t, _, v, hd in outbox.sent if t == topics.dlq("feedback.labels")]
    assert len(dlq) == 1
    assert dlq[0][1]["driftline-error-class"] == b"unknown_event"
    assert p.accuracy is not None
    snap = p.accuracy.snapshot((MODEL, 1))
    assert snap is not None
    assert (snap.correct, snap.total) == (6, 10)


def test_a_label_for_an_event_past_retention_is_dead_lettered_as_expired() -> None:
    s = _settings(join_retention_s=60)
    p, outbox, _ = _pipeline(s)
    topics = s.kafka.topics
    w = _window(1, BASE)

    async def scenario() -> None:
        await _inputs(p, _records(topics.sensor_windows, [codec.encode(w)]))
        await _join_all(p, outbox)
        await p.on_labels(
            _records(topics.feedback_labels, [_label("e1", "healthy", BASE + 61_000)])
        )
        await _join_all(p, outbox)

    _run(scenario())
    dlq = [dict(hd) for t, _, _, hd in outbox.sent if t == topics.dlq("feedback.labels")]
    assert len(dlq) == 1
    assert dlq[0]["driftline-error-message"].startswith(b"expired")


def test_a_label_that_overtakes_its_input_waits_for_it() -> None:
    s = _settings(label_wait_s=30)
    p, outbox, _ = _pipeline(s)
    topics = s.kafka.topics
    w = _window(4, BASE)

    async def scenario() -> None:
        await p.on_labels(_records(topics.feedback_labels, [_label("e4", "healthy", BASE + 1000)]))
        await _join_all(p, outbox)
        assert not [x for x in outbox.sent if x[0] == topics.training_windows]
        await _inputs(p, _records(topics.sensor_windows, [codec.encode(w)]))
        await _join_all(p, outbox)  # input, but no prediction yet: still waiting
        assert not [x for x in outbox.sent if x[0] == topics.training_windows]
        result = codec.encode(_result(4, BASE, "healthy", 0.8))
        await p.on_results(_records(topics.inference_results, [result]), forward=True)
        await _join_all(p, outbox)

    _run(scenario())
    emitted = [
        codec.decode(LabelledWindow, v)
        for t, _, v, _ in outbox.sent
        if t == topics.training_windows
    ]
    assert [(x.event_id, x.predicted_class) for x in emitted] == [("e4", "healthy")]


def _results(n: int, seed: int, start_t: int = BASE) -> list[InferenceResult]:
    rng = np.random.default_rng(seed)
    return [
        _result(i, start_t + int(t), INSULATOR_CLASSES[int(c)], float(conf))
        for i, (t, c, conf) in enumerate(
            zip(
                np.sort(rng.integers(0, 180_000, n)),
                rng.integers(0, 4, n),
                rng.beta(5, 2, n),
                strict=True,
            )
        )
    ]


def _partitioned(results: list[InferenceResult]) -> dict[int, list[RawRecord]]:
    """Records by partition as Kafka would hold them: an asset's events in one partition."""
    out: dict[int, list[RawRecord]] = {}
    for r in results:
        part = int(r.asset_id[1:])
        recs = out.setdefault(part, [])
        recs.append(RawRecord("t.inference.results", part, len(recs), b"k", codec.encode(r), AVRO))
    return out


def test_statistics_converge_after_an_outage_and_ignore_replays() -> None:
    s = _settings()
    parts = _partitioned(_results(600, seed=1))
    expected, _, store_expected = _pipeline(s, join=False)

    async def all_at_once() -> None:
        for recs in parts.values():
            await expected.on_results(recs, forward=False)
        assert await expected.flush()

    _run(all_at_once())
    assert store_expected.hashes

    p, _, store = _pipeline(s, join=False)

    async def with_outage() -> None:
        first = {k: v[: len(v) // 2] for k, v in parts.items()}
        rest = {k: v[len(v) // 2 :] for k, v in parts.items()}
        for recs in first.values():
            await p.on_results(recs, forward=False)
        assert await p.flush()
        store.down = True
        for recs in rest.values():
            await p.on_results(recs, forward=False)
        assert not await p.flush(now=1.0)
        assert p.stats is not None
        assert p.stats.dirty, "changes wait for the store"
        store.down = False
        for recs in parts.values():  # a replay after a crash: already counted, skipped
            await p.on_results(recs[: len(recs) // 3], forward=False)
        assert await p.flush(now=1000.0)

    _run(with_outage())
    assert _without_sentinel(store.hashes) == _without_sentinel(store_expected.hashes)


def test_a_store_that_lost_its_data_gets_every_window_again() -> None:
    s = _settings()
    parts = _partitioned(_results(300, seed=2))
    p, _, store = _pipeline(s, join=False)

    async def scenario() -> None:
        for recs in parts.values():
            await p.on_results(recs, forward=False)
        assert await p.flush()
        before = _without_sentinel(store.hashes)
        store.hashes.clear()
        assert await p.flush()  # notices the sentinel is gone
        assert await p.flush()  # writes everything held
        assert _without_sentinel(store.hashes) == before

    _run(scenario())


def test_state_restored_from_the_table_continues_exactly() -> None:
    s = _settings()
    parts = _partitioned(_results(400, seed=3))
    whole, _, store_whole = _pipeline(s, join=False)
    first, _, _ = _pipeline(s, join=False)

    async def scenario() -> MemoryFeatureStore:
        for recs in parts.values():
            await whole.on_results(recs, forward=False)
        await whole.flush()
        for recs in parts.values():
            await first.on_results(recs[: len(recs) // 2], forward=False)
        assert first.stats is not None
        # A new worker recovers the changelog, then Kafka redelivers from an older offset.
        restarted, _, store = _pipeline(s, join=False)
        assert restarted.stats is not None
        restarted.stats.table = first.stats.table
        restarted.on_stats_recovered()
        for recs in parts.values():
            await restarted.on_results(recs[len(recs) // 4 :], forward=False)
        await restarted.flush()
        return store

    store = _run(scenario())
    assert isinstance(store, MemoryFeatureStore)
    assert _without_sentinel(store.hashes) == _without_sentinel(store_whole.hashes)


def test_late_events_are_dropped_the_same_way_whatever_the_batching() -> None:
    s = _settings(allowed_lateness_s=0)
    results = _results(50, seed=4)
    late = _result(999, BASE, "healthy", 0.5)
    late = InferenceResult(
        **{**{f: getattr(late, f) for f in late.__struct_fields__}, "asset_id": "a0"}
    )
    stream = [*results[:25], late, *results[25:]]
    stream = [r for r in stream if r.asset_id == "a0"]
    stores = []
    for size in (1, 7, 100):
        p, _, store = _pipeline(s, join=False)
        recs = [
            RawRecord("t.inference.results", 0, i, b"k", codec.encode(r), AVRO)
            for i, r in enumerate(stream)
        ]

        async def feed(
            p: FeaturesPipeline = p, recs: list[RawRecord] = recs, size: int = size
        ) -> None:
            for lo in range(0, len(recs), size):
                await p.on_results(recs[lo : lo + size], forward=False)
            await p.flush()

        _run(feed())
        stores.append(_without_sentinel(store.hashes))
        assert p.stats is not None
        held = sum(b.count for b in p.stats.buckets[("a0", MODEL, 1)].values())
        assert held == len(stream) - 1, "the late event is dropped"
    assert stores[0] == stores[1] == stores[2]


def _without_sentinel(hashes: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {k: v for k, v in hashes.items() if not k.endswith("features:alive")}


@pytest.mark.parametrize("window", [(60, 600, 60), (60, 600, 300)])
def test_every_window_written_matches_a_batch_oracle(window: tuple[int, int, int]) -> None:
    bucket_s, hopping_s, hop_s = window
    s = _settings(bucket_s=bucket_s, hopping_s=hopping_s, hop_s=hop_s)
    results = _results(500, seed=5)
    p, _, store = _pipeline(s, join=False)

    async def feed() -> None:
        for recs in _partitioned(results).values():
            await p.on_results(recs, forward=False)
        await p.flush()

    _run(feed())
    stats_keys = [k for k in store.hashes if k.startswith("p:stats:")]
    assert stats_keys
    for key in stats_keys:
        fields = store.hashes[key]
        start, end = int(fields["window_start_ms"]), int(fields["window_end_ms"])
        inside = [
            r
            for r in results
            if r.asset_id == fields["asset_id"] and start <= r.event_time_ms < end
        ]
        conf = np.array([r.confidence for r in inside])
        assert int(fields["count"]) == len(inside)
        assert float(fields["confidence_mean"]) == pytest.approx(conf.mean(), abs=2e-6)
        assert abs(float(fields["confidence_p90"]) - np.percentile(conf, 90)) <= 0.01
        assert int(fields["event_time_ms"]) == max(r.event_time_ms for r in inside)


def _dead_letters(outbox: ListOutbox, topic: str) -> list[dict[str, bytes]]:
    return [
        {k: v if isinstance(v, bytes) else v.encode() for k, v in hd if v is not None}
        for t, _, _, hd in outbox.sent
        if t == topic
    ]


def test_an_inspection_labels_its_assets_open_events_and_a_per_event_label_first_wins() -> None:
    s = _settings()
    p, outbox, _ = _pipeline(s)
    topics = s.kafka.topics
    windows = [_window(i, BASE + i * 1000) for i in range(12)]  # assets a0, a1, a2 in turn
    results = [
        codec.encode(_result(i, w.event_time_ms, "healthy", 0.9)) for i, w in enumerate(windows)
    ]

    async def scenario() -> None:
        await _inputs(p, _records(topics.sensor_windows, [codec.encode(w) for w in windows]))
        await p.on_results(_records(topics.inference_results, results), forward=True)
        await _join_all(p, outbox)
        # e3 (asset a0) is labelled on its own first; then a0 is inspected over e0..e6.
        await p.on_labels(
            _records(topics.feedback_labels, [_label("e3", "contaminated", BASE + 10_500)])
        )
        await _join_all(p, outbox)
        # (given before the newest event time seen, BASE + 11 s: decided at once)
        inspection = _inspection("a0", "cracked", BASE + 10_500, lookback_ms=5_000)
        await p.on_labels(_records(topics.feedback_labels, [inspection], start=1))
        await _join_all(p, outbox)
        # The same inspection again (a replay), a per-event label it already covered, and an
        # inspection of a time the asset sent nothing in.
        empty = _inspection("a1", "healthy", BASE - 10_000, lookback_ms=1_000)
        again = [inspection, _label("e6", "healthy", BASE + 10_600), empty]
        await p.on_labels(_records(topics.feedback_labels, again, start=2))
        await _join_all(p, outbox)

    _run(scenario())
    emitted = _windows_out(outbox, topics.training_windows)
    got = sorted((w.event_id, w.true_class) for w in emitted)
    # The inspection covers event times BASE+5500 .. BASE+10500: a0's e6 and e9 (e3 is taken).
    assert got == [("e3", "contaminated"), ("e6", "cracked"), ("e9", "cracked")]
    assert {w.event_id: w.input for w in emitted}["e9"] == codec.encode(windows[9])
    dlq = _dead_letters(outbox, topics.dlq("feedback.labels"))
    assert len(dlq) == 1
    assert dlq[0]["driftline-error-class"] == b"unknown_event"
    assert b"asset a1" in dlq[0]["driftline-error-message"]


def test_labels_that_cannot_be_joined_are_dead_lettered_with_the_reason() -> None:
    s = _settings()
    p, outbox, _ = _pipeline(s)
    topics = s.kafka.topics
    no_asset = codec.encode(Label(event_id="e1", true_class="healthy", source="t", label_time_ms=1))
    no_lookback = codec.encode(
        Label(asset_id="a1", true_class="healthy", source="t", label_time_ms=1)
    )

    async def scenario() -> None:
        await p.on_labels(_records(topics.feedback_labels, [no_asset, no_lookback, b"\xff"]))

    _run(scenario())
    dlq = _dead_letters(outbox, topics.dlq("feedback.labels"))
    assert [d["driftline-error-class"] for d in dlq] == [b"schema_invalid"] * 2 + [b"undecodable"]
    assert b"needs asset_id" in dlq[0]["driftline-error-message"]
    assert not outbox.take(p.join_topic), "nothing reaches the join"


def test_an_input_no_longer_in_kafka_dead_letters_its_label_and_can_be_labelled_later() -> None:
    s = _settings()
    p, outbox, _ = _pipeline(s)
    topics = s.kafka.topics
    w = _window(1, BASE)
    assert isinstance(p.reader, MemoryInputReader)
    reader = p.reader

    async def scenario() -> None:
        await _inputs(p, _records(topics.sensor_windows, [codec.encode(w)]))
        await _join_all(p, outbox)
        result = codec.encode(_result(1, BASE, "healthy", 0.8))
        await p.on_results(_records(topics.inference_results, [result]), forward=True)
        await _join_all(p, outbox)
        reader.forget((topics.sensor_windows, 0, 0))
        await p.on_labels(_records(topics.feedback_labels, [_label("e1", "healthy", BASE + 1)]))
        await _join_all(p, outbox)

    _run(scenario())
    assert not _windows_out(outbox, topics.training_windows)
    dlq = _dead_letters(outbox, topics.dlq("feedback.labels"))
    assert [d["driftline-error-class"] for d in dlq] == [b"missing_input"]


def test_the_join_keeps_references_not_photos() -> None:
    s = _settings()
    p, outbox, _ = _pipeline(s)
    topics = s.kafka.topics
    photo = CameraImage(
        event_id="img1",
        asset_id="a1",
        camera_id="c",
        event_time_ms=BASE,
        content_type="image/jpeg",
        image=bytes(range(256)) * 2000,  # 512 kB
    )
    value = codec.encode(photo)
    r = _result(1, BASE, "cracked", 0.7)
    r = InferenceResult(**{**{f: getattr(r, f) for f in r.__struct_fields__}, "event_id": "img1"})

    async def scenario() -> None:
        await _inputs(p, _records(topics.camera_images, [value]))
        forwarded = outbox.take(p.join_topic)
        assert all(len(r.value or b"") < 300 for r in forwarded), "a reference travels"
        await p.on_join(forwarded)
        result = InferenceResult(
            **{**{f: getattr(r, f) for f in r.__struct_fields__}, "modality": "image"}
        )
        await p.on_results(_records(topics.inference_results, [codec.encode(result)]), forward=True)
        await p.on_labels(
            _records(topics.feedback_labels, [_label("img1", "cracked", BASE + 5, "a1")])
        )
        await _join_all(p, outbox)

    _run(scenario())
    assert p.join is not None
    assert max(len(v) for _, v in p.join.states.items()) < 300
    emitted = _windows_out(outbox, topics.training_windows)
    assert [(x.event_id, x.modality, x.input_type) for x in emitted] == [
        ("img1", "image", "CameraImage")
    ]
    assert codec.decode(CameraImage, emitted[0].input).image == photo.image


def test_a_restarted_join_recovers_its_tables_and_emits_each_label_once() -> None:
    s = _settings(label_wait_s=30)
    first, outbox, _ = _pipeline(s)
    topics = s.kafka.topics
    windows = [_window(i, BASE + i * 1000) for i in range(6)]
    records = _records(topics.sensor_windows, [codec.encode(w) for w in windows])
    results = [
        codec.encode(_result(i, w.event_time_ms, "healthy", 0.9)) for i, w in enumerate(windows)
    ]
    labels = [_label(f"e{i}", "healthy", BASE + 2_000) for i in range(6)]

    async def scenario() -> FeaturesPipeline:
        await _inputs(first, records)
        await first.on_results(_records(topics.inference_results, results[:3]), forward=True)
        await _join_all(first, outbox)
        await first.on_labels(_records(topics.feedback_labels, labels))
        await _join_all(first, outbox)  # e0..e2 emitted; e3..e5 wait for their predictions
        # A new worker recovers the changelogs, then Kafka redelivers everything.
        second, _, _ = _pipeline(s, outbox=outbox, reader=first.reader)
        assert second.join is not None
        assert first.join is not None
        second.join.states, second.join.parked = first.join.states, first.join.parked
        second.join.index = first.join.index
        await second.on_join_recovered()
        await second.on_results(_records(topics.inference_results, results), forward=True)
        await second.on_labels(_records(topics.feedback_labels, labels))
        await _join_all(second, outbox)
        return second

    _run(scenario())
    emitted = _windows_out(outbox, topics.training_windows)
    assert sorted(w.event_id for w in emitted) == [f"e{i}" for i in range(6)]
    assert all(w.predicted_class == "healthy" for w in emitted)
