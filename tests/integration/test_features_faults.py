"""Faults of the features app, against the real Kafka and Redis: a Redis outage, a crash, a rebuild.

The outage test runs a Redis server of its own (the session's is shared with other tests) and
kills it under the running app.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry
from typing_extensions import override

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.schemas.messages import InferenceResult, Label, LabelledWindow
from driftline.services.features.accuracy import bucket_counts, bucket_hash_key, bucket_starts
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.pipeline import FeaturesPipeline, PipelineTables
from driftline.services.features.records import Outbox, RawRecord
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.store import MemoryFeatureStore
from driftline.services.features.tables import DictTable
from driftline.services.localstack import free_port
from driftline.services.localstack.redis import redis_ping
from driftline.services.runtime.settings import KafkaSettings
from tests.integration.kafka_io import drain
from tests.integration.test_features import (
    MINUTE,
    FeaturesProcess,
    base_minute,
    key_prefix,  # noqa: F401  (fixture)
    produce_labels,
    produce_results,
    produce_windows,
    random_results,
    rds,  # noqa: F401  (fixture)
    sensor_windows,
    start_app,  # noqa: F401  (fixture)
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

AVRO: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]
SKIPPED_KEYS = ("features:alive", ":drift:")


class RedisServer:
    """A redis-server of this test's own, without persistence: a restart comes back empty."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not redis_ping(self.port):
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def snapshot(client: redis.Redis, prefix: str) -> dict[str, dict[str, str]]:
    """Every hash under the prefix (drift evaluations and the sentinel aside)."""
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    return {k: client.hgetall(k) for k in sorted(keys) if not any(s in k for s in SKIPPED_KEYS)}


def labelled_in_redis(client: redis.Redis, prefix: str) -> int:
    """Labels counted in the live accuracy buckets of insulator-sensor v1, all partitions."""
    index = client.hgetall(f"{prefix}accuracy:insulator-sensor:v1")
    size = int(index.get("bucket_ms", "0"))
    return sum(
        bucket_counts(
            client.hgetall(bucket_hash_key(prefix, ("insulator-sensor", 1), size, s))
        ).labelled
        for s in bucket_starts(index, 1000)
    )


def expected_state(
    settings: FeaturesSettings, results: list[InferenceResult]
) -> dict[str, dict[str, str]]:
    """What the statistics path writes for these results, computed in process."""
    store = MemoryFeatureStore()
    pipeline = FeaturesPipeline(
        settings,
        FeaturesMetrics(CollectorRegistry()),
        store,
        _NoOutbox(),
        PipelineTables(stats=DictTable()),
    )
    by_asset: dict[str, list[InferenceResult]] = {}
    for r in results:
        by_asset.setdefault(r.asset_id, []).append(r)

    async def run() -> None:
        for i, rs in enumerate(by_asset.values()):
            recs = [RawRecord("r", i, n, b"k", codec.encode(r), AVRO) for n, r in enumerate(rs)]
            await pipeline.on_results(recs, forward=False)
        await pipeline.flush()

    asyncio.run(run())
    return {k: v for k, v in sorted(store.hashes.items()) if not any(s in k for s in SKIPPED_KEYS)}


class _NoOutbox(Outbox):
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
        return None


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, app: FeaturesProcess
) -> None:
    app.wait(check, timeout_s, what)


def test_redis_outage_the_features_lag_then_converge(
    kafka: KafkaSettings,
    key_prefix: str,  # noqa: F811
    own_redis: RedisServer,
    start_app: Callable[..., FeaturesProcess],  # noqa: F811
) -> None:
    t0 = base_minute()
    windows = sensor_windows(480, t0, seed=11, step_ms=375)  # 180 s over three assets
    results = random_results(windows, seed=11)
    first, second = results[:240], results[240:]
    settings = FeaturesSettings(kafka=kafka, redis_key_prefix=key_prefix)
    client = redis.Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=2)

    app = start_app(redis_url=own_redis.url, role="stats")
    produce_results(kafka, first)
    want_first = expected_state(settings, first)
    app.wait(lambda: snapshot(client, key_prefix) == want_first, 60, "the first half in Redis")

    own_redis.kill()
    produce_results(kafka, second)
    app.wait(
        lambda: app.metric("driftline_feature_events_total", outcome="accepted") == len(results),
        60,
        "the app to keep consuming while Redis is down",
    )
    app.wait(lambda: app.metric("driftline_feature_store_errors_total") > 0, 30, "failed flushes")
    assert app.metric("driftline_feature_store_up") == 0.0
    assert app.metric("driftline_feature_dirty_windows") >= 0  # exported, lagging

    own_redis.start()  # comes back empty, on the same port
    want = expected_state(settings, results)
    app.wait(lambda: snapshot(client, key_prefix) == want, 60, "Redis to converge after its return")
    assert app.metric("driftline_feature_store_up") == 1.0
    client.close()


def _group_committed(kafka: KafkaSettings, group: str, topics: list[str]) -> bool:
    """True when the group has committed every partition of the topics up to its end."""
    consumer = Consumer(kafka.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        parts = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            parts += [TopicPartition(topic, p) for p in meta.partitions]
        for tp in consumer.committed(parts, timeout=10):
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > 0 and tp.offset < high:
                return False
        return True
    finally:
        consumer.close()


def test_a_restarted_app_recovers_its_tables_from_the_changelogs(
    kafka: KafkaSettings,
    rds: redis.Redis,  # noqa: F811
    key_prefix: str,  # noqa: F811
    start_app: Callable[..., FeaturesProcess],  # noqa: F811
) -> None:
    t0 = base_minute()
    before = sensor_windows(60, t0, seed=21, step_ms=1000)
    after = sensor_windows(60, t0 + 30_000, seed=22, step_ms=1000)
    results_before = random_results(before, seed=21)
    results_after = random_results(after, seed=22)
    inputs = produce_windows(kafka, before)
    produce_results(kafka, results_before)

    app = start_app(role="all", label_wait_s="0")
    group = f"{kafka.topic_prefix}driftline-features"
    join_topic = f"{group}-join"
    # The join's router forwards inputs and results (its own group), faust reads the join
    # topic and the results for the statistics: everything consumed is committed.
    routed = [kafka.topics.sensor_windows, kafka.topics.inference_results]
    topics = [kafka.topics.inference_results, join_topic]
    app.wait(
        lambda: (
            _group_committed(kafka, f"{group}-router", routed)
            and _group_committed(kafka, group, topics)
        ),
        60,
        "every input committed",
    )
    app.kill()  # no clean shutdown: the state must come back from the changelogs

    produce_windows(kafka, after)
    produce_results(kafka, results_after)
    at = t0 + 10 * MINUTE
    labels = [
        Label(
            event_id=w.event_id,
            asset_id=w.asset_id,
            true_class="healthy",
            source="x",
            label_time_ms=at,
        )
        for w in before
    ]
    produce_labels(kafka, labels)
    restarted = start_app(role="all", label_wait_s="0")

    emitted = drain(kafka, kafka.topics.training_windows, expect=len(before), timeout_s=60)
    got = {
        codec.decode(LabelledWindow, m.value()).event_id: codec.decode(LabelledWindow, m.value())
        for m in emitted
    }
    assert set(got) == {w.event_id for w in before}
    for w, value, r in zip(before, inputs, results_before, strict=True):
        assert got[w.event_id].input == value, "the input came back from the join changelog"
        assert got[w.event_id].predicted_class == r.predicted_class
    settings = FeaturesSettings(kafka=kafka, redis_key_prefix=key_prefix)
    want = dict(expected_state(settings, results_before + results_after).items())
    restarted.wait(
        lambda: (
            {k: v for k, v in snapshot(rds, key_prefix).items() if ":accuracy:" not in k} == want
        ),
        60,
        "statistics over both runs, each event counted once",
    )
    assert restarted.metric("driftline_labels_joined_total", outcome="unknown") == 0
    # Only the new results were consumed again: the old ones' counts came from the changelog.
    assert restarted.metric("driftline_feature_events_total", outcome="accepted") == len(
        results_after
    )


def test_rebuild_replays_kafka_into_the_same_redis_state(
    kafka: KafkaSettings,
    rds: redis.Redis,  # noqa: F811
    key_prefix: str,  # noqa: F811
    start_app: Callable[..., FeaturesProcess],  # noqa: F811
) -> None:
    from driftline.services.cli import main

    t0 = base_minute()
    windows = sensor_windows(300, t0, seed=31, step_ms=600)
    results = random_results(windows, seed=31)
    produce_windows(kafka, windows)
    produce_results(kafka, results)
    labels = [
        Label(
            event_id=w.event_id,
            asset_id=w.asset_id,
            true_class=INSULATOR_CLASSES[i % 4],
            source="x",
            label_time_ms=t0 + 5 * MINUTE + i * 1000,
        )
        for i, w in enumerate(windows[::3])
    ]
    produce_labels(kafka, labels)
    app = start_app(role="all", label_wait_s="0")
    app.wait(
        lambda: (
            labelled_in_redis(rds, key_prefix) == len(labels)
            and app.metric("driftline_feature_dirty_windows") == 0
            and app.metric("driftline_feature_events_total", outcome="accepted") == len(results)
        ),
        60,
        "statistics and live accuracy in Redis",
    )
    time.sleep(1.0)  # one more flush cycle
    app.stop()
    live = snapshot(rds, key_prefix)
    assert any(":stats:" in k for k in live)
    assert any(":accuracy:" in k for k in live)

    args = [
        "--bootstrap-servers",
        kafka.bootstrap_servers,
        "--topic-prefix",
        kafka.topic_prefix,
        "--redis-url",
        app.redis_url,
        "--redis-key-prefix",
        key_prefix,
    ]
    assert main(["features", "rebuild", "--fresh", *args]) == 0
    assert snapshot(rds, key_prefix) == live, "a fresh rebuild reproduces the state"
    assert main(["features", "rebuild", *args]) == 0
    assert snapshot(rds, key_prefix) == live, "a rebuild over the state leaves it unchanged"
