"""The statistics role on the batch loop, against the real Kafka and Redis: a killed worker
comes back from its changelog, and every result is counted once however the kill fell."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from driftline.services.features.settings import FeaturesSettings
from driftline.services.runtime.settings import KafkaSettings
from tests.integration.test_features import (
    FeaturesProcess,
    base_minute,
    key_prefix,  # noqa: F401  (fixture)
    produce_results,
    random_results,
    rds,  # noqa: F401  (fixture)
    sensor_windows,
    start_app,  # noqa: F401  (fixture)
)
from tests.integration.test_features_faults import _group_committed, expected_state, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_a_killed_stats_worker_restores_its_buckets_and_reads_only_what_it_had_not_committed(
    kafka: KafkaSettings,
    rds: redis.Redis,  # noqa: F811
    key_prefix: str,  # noqa: F811
    start_app: Callable[..., FeaturesProcess],  # noqa: F811
) -> None:
    t0 = base_minute()
    before = random_results(sensor_windows(240, t0, seed=31, step_ms=500), seed=31)
    after = random_results(sensor_windows(240, t0 + 60_000, seed=32, step_ms=500), seed=32)
    settings = FeaturesSettings(kafka=kafka, redis_key_prefix=key_prefix)
    produce_results(kafka, before)
    app = start_app(role="stats")
    topics = [kafka.topics.inference_results]
    app.wait(lambda: _group_committed(kafka, settings.stats_group_id, topics), 60, "a commit")
    app.kill()  # no clean shutdown: the buckets must come back from the changelog

    produce_results(kafka, after)
    restarted = start_app(role="stats")
    want = expected_state(settings, before + after)
    restarted.wait(lambda: snapshot(rds, key_prefix) == want, 60, "both runs' results, once each")
    # Only the new results were read: the old ones' counts came back from the changelog.
    assert restarted.metric("driftline_feature_events_total", outcome="accepted") == len(after)


def test_a_worker_killed_mid_stream_counts_every_result_once(
    kafka: KafkaSettings,
    rds: redis.Redis,  # noqa: F811
    key_prefix: str,  # noqa: F811
    start_app: Callable[..., FeaturesProcess],  # noqa: F811
) -> None:
    t0 = base_minute()
    results = random_results(sensor_windows(3000, t0, seed=33, step_ms=40), seed=33)
    settings = FeaturesSettings(kafka=kafka, redis_key_prefix=key_prefix)
    produce_results(kafka, results)
    # Small batches, so the kill most likely lands between a batch's changelog records and its
    # commit: the restarted worker reads those results again and must not count them twice.
    app = start_app(role="stats", batch_max="50")
    app.wait(
        lambda: app.metric("driftline_feature_events_total", outcome="accepted") > 0,
        60,
        "some results folded",
    )
    app.kill()
    restarted = start_app(role="stats", batch_max="50")
    want = expected_state(settings, results)
    restarted.wait(lambda: snapshot(rds, key_prefix) == want, 90, "every result, once each")
