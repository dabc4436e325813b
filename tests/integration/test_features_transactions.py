"""The features app on results written in Kafka transactions, as exactly-once inference writes
them: its committed offsets keep up (every transaction leaves a marker, a gap in the offsets,
which faust-streaming's own gap handling turned into a commit that fell further behind), and
an aborted transaction's results are never counted (the app reads committed records only).
See services/features/faustfix.py. The stats role now runs on the batch loop (librdkafka
commits past markers itself); the test holds it to the same promise."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
import redis
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from driftline.schemas import codec
from driftline.services.features.settings import FeaturesSettings
from driftline.services.runtime.settings import KafkaSettings
from tests.integration.kafka_io import drain
from tests.integration.test_features import (
    AVRO,
    MODEL,
    FeaturesProcess,
    base_minute,
    key_prefix,  # noqa: F401  (fixture)
    random_results,
    rds,  # noqa: F401  (fixture)
    sensor_windows,
    start_app,  # noqa: F401  (fixture)
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# Enough transactions that faust's own gap handling (one transaction further per commit, a
# commit every 0.5 s here) could not catch up within the deadline below.
TRANSACTIONS = 120
PER_TRANSACTION = 6
CATCH_UP_S = 30


def test_transactional_results_are_committed_to_the_end_and_aborted_ones_never_counted(
    kafka: KafkaSettings,
    rds: redis.Redis,  # noqa: F811  (the fixture)
    key_prefix: str,  # noqa: F811
    start_app: Callable[..., FeaturesProcess],  # noqa: F811
) -> None:
    app = start_app(role="stats")
    topic = kafka.topics.inference_results
    windows = sensor_windows(TRANSACTIONS * PER_TRANSACTION, base_minute(), seed=7, assets=3)
    results = random_results(windows, seed=7)
    aborted = random_results(sensor_windows(30, base_minute(), seed=8, assets=1), seed=8)
    prod = Producer(
        kafka.client_config(**{"transactional.id": f"{kafka.topic_prefix}tx-{uuid.uuid4().hex}"})
    )
    prod.init_transactions(30)
    for i in range(TRANSACTIONS):
        prod.begin_transaction()
        for r in results[i * PER_TRANSACTION : (i + 1) * PER_TRANSACTION]:
            prod.produce(topic, key=r.asset_id, value=codec.encode(r), headers=AVRO)
        prod.commit_transaction(30)
        if i % 40 == 10:  # now and then a batch that inference gave up on
            prod.begin_transaction()
            for r in aborted:
                ghost = r.__class__(**{**codec.to_record(r), "asset_id": "insulator-aborted"})
                prod.produce(topic, key=ghost.asset_id, value=codec.encode(ghost), headers=AVRO)
            prod.flush(30)
            prod.abort_transaction(30)

    client = AdminClient(kafka.client_config())
    group = FeaturesSettings(kafka=kafka).stats_group_id  # the stats role's, not faust's
    reader = Consumer(kafka.client_config(**{"group.id": f"peek-{uuid.uuid4().hex[:6]}"}))
    # Partitions that hold committed results (one may hold only the aborted ones: a reader of
    # committed records gets nothing there, so there is nothing to commit).
    parts = {m.partition() for m in drain(kafka, topic, expect=len(results), timeout_s=60)}
    ends = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    reader.close()

    def committed() -> dict[int, int]:
        request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in parts])]
        got = client.list_consumer_group_offsets(request)[group].result(timeout=10)
        return {tp.partition: tp.offset for tp in got.topic_partitions if tp.error is None}

    # Every partition ends with a transaction marker; the app commits up to it (end - 1) or
    # past it. Before the fix the commits were hundreds of records behind and falling back.
    def caught_up() -> bool:
        offsets = committed()
        return all(offsets.get(p, -1) >= end - 1 for p, end in ends.items())

    deadline = time.monotonic() + CATCH_UP_S
    while not caught_up():
        assert app.proc is not None
        assert app.proc.poll() is None, "the features app exited"
        if time.monotonic() > deadline:
            raise AssertionError(f"committed {committed()} of {ends} after {CATCH_UP_S} s")
        time.sleep(0.5)

    total = str(len(results) // 3)  # three assets, results in turn
    asset_hash = rds.hgetall(f"{key_prefix}asset:insulator-00000")
    assert asset_hash.get(f"{MODEL}:v1:10m:count") == total, asset_hash
    ghosts = list(rds.scan_iter(match=f"{key_prefix}*insulator-aborted*", count=1000))
    assert not ghosts, f"results of aborted transactions were counted: {ghosts[:3]}"
