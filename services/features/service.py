"""`driftline features`: serve /metrics and run one worker until signalled: a faust worker
(roles all and join), or the statistics role on the shared batch loop (role stats)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge

from driftline.services.core.batching import BatchPolicy
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.router import RouterThread, RouterTopics
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.startup import (
    Readiness,
    TopicNeed,
    deployed_join_partitions,
    ensure_topics,
    topic_needs,
)
from driftline.services.features.store import FeatureStore, RedisFeatureStore
from driftline.services.runtime import metrics as m

log = logging.getLogger(__name__)


def run(settings: FeaturesSettings, metrics_registry: CollectorRegistry | None = None) -> None:
    """Run the worker in this thread; SIGINT/SIGTERM stop it cleanly (faust's handlers)."""
    reg = metrics_registry or CollectorRegistry()
    if settings.role == "stats":
        run_stats(settings, reg)
        return
    from faust.worker import Worker

    from driftline.services.features.app import build, lock_data_dir

    # An existing join topic fixes the partitioning of the join's state: keep to it.
    settings = deployed_join_partitions(settings)
    # Held until this function returns: the worker's tables in its data dir are its own.
    locks = lock_data_dir(settings) if settings.on_disk else []
    metrics = FeaturesMetrics(reg)
    features = build(settings, metrics)
    # Every topic exists, with leaders, before the worker joins its group: otherwise the first
    # assignment can leave the join's agents without partitions (see services.features.startup).
    extra = [RouterTopics.of(settings)] if settings.runs_join else []
    needs = topic_needs(features.app, extra, replication=features.replication)
    ensure_topics(settings.kafka, needs, timeout_s=settings.registry_timeout_s)
    # The join's router forwards inputs, results and labels to the join topic from a thread
    # of its own (features/router.py); if it dies, the worker stops rather than join nothing.
    router = (
        RouterThread(settings, metrics, on_failure=lambda: os.kill(os.getpid(), signal.SIGTERM))
        if settings.runs_join
        else None
    )
    readiness = Readiness()
    health = m.Health(ready=lambda: readiness.ready)

    async def tick() -> None:
        readiness.update(features.app, features.waiting_for)
        health.tick()

    features.app.timer(1.0, name="health")(tick)

    log.info(
        "features app %s (role %s) on %s, Redis prefix %r",
        settings.faust_app_id,
        settings.role,
        settings.kafka.bootstrap_servers,
        settings.redis_key_prefix,
    )
    # Logging stays as logs.configure set it (faust would otherwise install its own setup).
    worker = Worker(features.app, loglevel=settings.log_level, quiet=True, override_logging=False)
    try:
        with m.metrics_server(reg, health, settings.metrics_port):
            if router is not None:
                router.start()
            worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        if router is not None and router.is_alive():
            router.stop()
        for lock in locks:
            lock.close()


def run_stats(
    settings: FeaturesSettings,
    registry: CollectorRegistry,
    stop: Callable[[], bool] | None = None,
    store: FeatureStore | None = None,
) -> None:
    """The statistics role on the batch loop (services.features.statsloop) until stop() is
    true, or SIGINT/SIGTERM when no stop is given."""
    from driftline.services.features.app import replication, topic_partitions
    from driftline.services.features.statsloop import StatsHandler
    from driftline.services.runtime.batchloop import BatchLoop, LoopConfig, LoopMetrics
    from driftline.services.runtime.shutdown import StopFlag

    source = settings.kafka.topics.inference_results
    partitions = topic_partitions(settings, source)
    # The changelog is the faust app's: created with the options faust would use, replicated
    # as every other topic of the cluster (app.replication).
    replicas, min_isr = replication(settings)
    changelog = TopicNeed(
        settings.stats_changelog_topic,
        partitions,
        own=True,
        compacted=True,
        replication_factor=replicas,
        min_insync_replicas=min_isr,
    )
    ensure_topics(settings.kafka, [changelog], timeout_s=settings.registry_timeout_s)
    if store is None:
        store = RedisFeatureStore.from_url(
            settings.redis_url.get_secret_value(), settings.redis_timeout_s
        )
    metrics = FeaturesMetrics(registry)
    handler = StatsHandler(settings, metrics, store, partitions)
    loop_metrics = LoopMetrics(
        metrics.batch_failures,
        Gauge(
            m.CONSUMER_LAG,
            "Records behind the partition end, from librdkafka statistics",
            ["topic", "partition"],
            registry=registry,
        ),
    )
    config = LoopConfig(
        kafka=settings.kafka,
        group_id=settings.stats_group_id,
        topics=[source],
        policy=BatchPolicy(settings.batch_max, settings.batch_wait_s),
        statistics_interval_ms=5000,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
    )
    health = m.Health(ready=lambda: handler.ready)
    loop = BatchLoop(config, handler, loop_metrics, health)
    log.info(
        "features statistics on the batch loop: %s (group %s), changelog %s, Redis prefix %r",
        source,
        settings.stats_group_id,
        settings.stats_changelog_topic,
        settings.redis_key_prefix,
    )
    with m.metrics_server(registry, health, settings.metrics_port):
        loop.run(stop if stop is not None else StopFlag().install())
