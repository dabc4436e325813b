"""`driftline features`: build the app, serve /metrics, run one faust worker until signalled."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from driftline.services.features.app import build, lock_data_dir
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.settings import FeaturesSettings
from driftline.services.features.startup import (
    Readiness,
    deployed_join_partitions,
    ensure_topics,
    topic_needs,
)
from driftline.services.runtime import metrics as m

log = logging.getLogger(__name__)


def run(settings: FeaturesSettings, metrics_registry: CollectorRegistry | None = None) -> None:
    """Run the worker in this thread; SIGINT/SIGTERM stop it cleanly (faust's handlers)."""
    from faust.worker import Worker

    reg = metrics_registry or CollectorRegistry()
    # An existing join topic fixes the partitioning of the join's state: keep to it.
    settings = deployed_join_partitions(settings)
    # Held until this function returns: the worker's tables in its data dir are its own.
    locks = lock_data_dir(settings) if settings.on_disk else []
    features = build(settings, FeaturesMetrics(reg))
    # Every topic exists, with leaders, before the worker joins its group: otherwise the first
    # assignment can leave the join's agents without partitions (see services.features.startup).
    needs = topic_needs(features.app, replication=features.replication)
    ensure_topics(settings.kafka, needs, timeout_s=settings.registry_timeout_s)
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
            worker.execute_from_commandline()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        for lock in locks:
            lock.close()
