"""`driftline infer`: follow the registry, load the champion, serve /metrics, run the loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry

from driftline.schemas.batch import DecodedBatch
from driftline.schemas.contracts import IMAGE_SIZE, SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.schemas.messages import MODALITY_SENSOR
from driftline.schemas.sensor_batch import decode_sensor_batch
from driftline.schemas.topics import CAMERA_IMAGES, SENSOR_WINDOWS
from driftline.services.inference.consumer import InferenceConsumer
from driftline.services.inference.handler import BatchStats, Decoder
from driftline.services.inference.images import decode_image_batch
from driftline.services.inference.metrics import InferenceMetrics
from driftline.services.inference.settings import InferenceSettings
from driftline.services.inference.watcher import ModelSlot, RegistryWatcher
from driftline.services.runtime import instance
from driftline.services.runtime import metrics as m
from driftline.services.runtime.artifacts import FsspecArtifactStore
from driftline.services.runtime.heap import freeze_heap

log = logging.getLogger(__name__)


class NoModelError(RuntimeError):
    """The registry has no usable version of the model this consumer serves."""


def decoder_for(settings: InferenceSettings) -> tuple[str, Decoder]:
    """The source topic (base name) and the batch decoder of the settings' modality.

    A sensor window has one contract shape; a photo is resized to the serving version's own
    input size, [3, height, width] in its I/O signature (the built-in IMAGE_SIZE without one).
    """
    if settings.modality == MODALITY_SENSOR:

        def sensors(
            values: Sequence[bytes | None],
            content_types: Sequence[str | None],
            _input_shape: tuple[int, ...],  # one contract shape: nothing to adapt
        ) -> DecodedBatch:
            return decode_sensor_batch(
                values,
                content_types,
                channels=len(SENSOR_CHANNELS),
                n_samples=SENSOR_SAMPLES,
                max_value_bytes=settings.max_value_bytes,
                channel_names=SENSOR_CHANNELS,
            )

        return SENSOR_WINDOWS, sensors

    def images(
        values: Sequence[bytes | None],
        content_types: Sequence[str | None],
        input_shape: tuple[int, ...],
    ) -> DecodedBatch:
        size = (input_shape[1], input_shape[2]) if len(input_shape) == 3 else IMAGE_SIZE
        return decode_image_batch(
            values,
            content_types,
            max_value_bytes=settings.max_value_bytes,
            max_image_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            allowed_uri_prefixes=tuple(settings.image_uri_prefixes),
            size=size,
        )

    return CAMERA_IMAGES, images


def _wait_for_model(
    settings: InferenceSettings, slot: ModelSlot, watcher: RegistryWatcher, stop: Callable[[], bool]
) -> bool:
    """Block until a model serves; False if asked to stop first.

    With no servable version the service waits, not ready (the watcher logged why, and says
    it again every registry_timeout_s): a restart or a scale-out after a bad publish keeps
    its place in the group's lag instead of crash-looping. Raises NoModelError only when the
    registry itself cannot be read.
    """
    name = settings.effective_model_name
    remind = time.monotonic() + settings.registry_timeout_s
    while not slot.wait_loaded(0.2):
        if stop():
            return False
        if watcher.error is not None:
            raise NoModelError(f"cannot read the registry: {watcher.error}")
        if time.monotonic() > remind:
            remind = time.monotonic() + settings.registry_timeout_s
            why = "; ".join(f"v{v}: {r}" for (v, _), r in watcher.rejected.items())
            log.warning(
                "still no servable version of %r in %r; waiting%s",
                name,
                settings.kafka.topics.models_registry,
                f" (rejected: {why})" if why else " (train one with `driftline train --bootstrap`)",
            )
    return True


def run(
    settings: InferenceSettings,
    stop: Callable[[], bool],
    on_batch: Callable[[BatchStats], None] | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> None:
    """Serve the modality's champion, following the registry, until stop() is true."""
    slot_claim = None
    if settings.exactly_once and "instance_id" not in settings.model_fields_set:
        # Unique per live instance, stable across restarts: see runtime/instance.py.
        slot_claim = instance.claim(settings.effective_group_id)
        settings = settings.model_copy(update={"instance_id": slot_claim.instance_id})
        log.info("exactly-once as instance %s", settings.transactional_id)
    try:
        _serve(settings, stop, on_batch, metrics_registry)
    finally:
        if slot_claim is not None:
            slot_claim.release()


def _serve(
    settings: InferenceSettings,
    stop: Callable[[], bool],
    on_batch: Callable[[BatchStats], None] | None,
    metrics_registry: CollectorRegistry | None,
) -> None:
    reg = metrics_registry or CollectorRegistry()
    metrics = InferenceMetrics(reg)
    slot = ModelSlot()
    # Artifact URIs name their store (file://, s3://): one fsspec store reads them all.
    watcher = RegistryWatcher(settings, slot, metrics, FsspecArtifactStore("file:///"))
    source, decoder = decoder_for(settings)
    health = m.Health(ready=lambda: slot.model is not None and bool(consumer.assigned))
    consumer = InferenceConsumer(settings, source, decoder, slot, metrics, health)
    with m.metrics_server(reg, health, settings.metrics_port):
        watcher.start()
        try:
            if not _wait_for_model(settings, slot, watcher, stop):
                return
            # Ready: what is loaded lives as long as the service (runtime/heap.py).
            log.info("%d objects frozen out of the collector's full passes", freeze_heap())

            def stopping() -> bool:
                if watcher.error is not None:
                    raise NoModelError(f"lost the registry: {watcher.error}")
                return stop()

            consumer.run(stopping, on_batch)
        finally:
            watcher.stop(timeout_s=10)
