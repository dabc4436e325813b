"""`driftline infer`: find the champion in the registry, load it, serve /metrics, run the loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from schemas.messages import ModelVersion
from services.inference.consumer import BatchStats, SensorInferenceConsumer
from services.inference.model import LoadedModel, ModelRejected, load
from services.runtime import metrics as m
from services.runtime import registry
from services.runtime.artifacts import ArtifactError, FsspecArtifactStore
from services.runtime.settings import InferenceSettings

log = logging.getLogger(__name__)

REGISTRY_POLL_S = 2.0


class NoModelError(RuntimeError):
    """The registry has no usable version of the model this consumer serves."""


def wait_for_champion(settings: InferenceSettings, stop: Callable[[], bool]) -> ModelVersion:
    """Read the registry from the beginning until it names a champion for our model."""
    name = settings.effective_model_name
    topic = settings.kafka.topics.models_registry
    deadline = time.monotonic() + settings.registry_timeout_s
    while not stop():
        snapshot = registry.read_snapshot(
            settings.kafka, topic, timeout_s=settings.registry_timeout_s
        )
        champion = snapshot.champions.get(name)
        if champion is not None:
            return champion
        if time.monotonic() > deadline:
            break
        log.info("no version of %s in %s yet; waiting", name, topic)
        time.sleep(REGISTRY_POLL_S)
    raise NoModelError(
        f"no champion version of {name!r} in {topic!r} after {settings.registry_timeout_s:.0f}s; "
        "train one with `driftline train --bootstrap`"
    )


def load_champion(settings: InferenceSettings, champion: ModelVersion) -> LoadedModel:
    store = FsspecArtifactStore(champion.artifact_uri.rsplit("/", 1)[0])
    try:
        return load(champion, store, settings.intra_op_threads)
    except (ArtifactError, ModelRejected) as exc:
        raise NoModelError(f"{champion.name} v{champion.version} cannot serve: {exc}") from exc


def run(
    settings: InferenceSettings,
    stop: Callable[[], bool],
    on_batch: Callable[[BatchStats], None] | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> None:
    """Serve the modality's champion model until stop() is true."""
    if settings.modality != "sensor":
        raise NotImplementedError(f"modality {settings.modality!r} is not served yet")
    reg = metrics_registry or CollectorRegistry()
    metrics = m.InferenceMetrics(reg)
    consumer_ref: list[SensorInferenceConsumer] = []
    health = m.Health(ready=lambda: bool(consumer_ref and consumer_ref[0].assigned))
    server = m.serve(reg, health, settings.metrics_port) if settings.metrics_port else None
    try:
        champion = wait_for_champion(settings, stop)
        model = load_champion(settings, champion)
        log.info("serving %s v%d from %s", champion.name, champion.version, champion.artifact_uri)
        consumer = SensorInferenceConsumer(settings, model, metrics, health)
        consumer_ref.append(consumer)
        consumer.run(stop, on_batch)
    finally:
        if server is not None:
            server.shutdown()
