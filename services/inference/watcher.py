"""Follow the model registry and hot-swap: load the new champion off the hot path, then swap.

The watcher reads models.registry from the beginning (it is compacted, so that is cheap), then
keeps following it. Whenever the champion pointer of our model names a version other than the
one serving, it fetches, verifies, checks and warms that version in this thread, and only then
replaces the slot's reference. The consumer reads the slot once per batch, so a swap lands
between two batches; the old session is released when the last batch using it is done.
Any failure leaves the current version serving and is logged and counted.
"""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from driftline.schemas.messages import ModelVersion
from driftline.services.inference.model import LoadedModel, ModelRejected, load
from driftline.services.runtime.artifacts import FsspecArtifactStore
from driftline.services.runtime.metrics import InferenceMetrics
from driftline.services.runtime.registry import RegistrySnapshot
from driftline.services.runtime.settings import InferenceSettings

log = logging.getLogger(__name__)

POLL_S = 0.2


class ModelSlot:
    """The one reference to the serving model; swapping it is a single assignment."""

    def __init__(self) -> None:
        self._model: LoadedModel | None = None
        self._loaded = threading.Event()

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        old, self._model = self._model, model
        self._loaded.set()
        return old

    def wait_loaded(self, timeout_s: float) -> bool:
        return self._loaded.wait(timeout_s)


class RegistryWatcher(threading.Thread):
    """Keeps `slot` on the registry's champion for one model name."""

    def __init__(
        self,
        settings: InferenceSettings,
        slot: ModelSlot,
        metrics: InferenceMetrics,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="registry-watcher", daemon=True)
        self.settings = settings
        self.slot = slot
        self.metrics = metrics
        self.stop_event = stop
        self.name_ = settings.effective_model_name
        self.topic = settings.kafka.topics.models_registry
        self.snapshot = RegistrySnapshot()
        self.rejected: dict[tuple[int, str], str] = {}  # (version, sha256) -> why
        self.caught_up = threading.Event()
        self.error: BaseException | None = None
        self._store = FsspecArtifactStore("file:///")

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # surfaced by the service, which stops serving
            self.error = exc
            log.exception("registry watcher failed")
            self.caught_up.set()

    def _follow(self) -> None:
        consumer = Consumer(
            self.settings.kafka.client_config(
                **{
                    "group.id": f"{self.settings.effective_group_id}-registry",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": True,
                }
            )
        )
        try:
            meta = consumer.list_topics(self.topic, timeout=self.settings.registry_timeout_s)
            tmeta = meta.topics.get(self.topic)
            if tmeta is None or tmeta.error is not None:
                raise RuntimeError(
                    f"registry topic {self.topic!r} not found; run `driftline topics create`"
                )
            pending = set(tmeta.partitions)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in pending])
            while not self.stop_event.is_set():
                msg = consumer.poll(POLL_S)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition() or 0)
                        if not pending and not self.caught_up.is_set():
                            self._on_champion(self.snapshot.champions.get(self.name_))
                            self.caught_up.set()
                        continue
                    log.warning("registry read error: %s", err)
                    continue
                key = msg.key()
                champion = self.snapshot.apply(key.decode() if key else None, msg.value())
                # Before catching up, only the last pointer matters; after, every new one does.
                if self.caught_up.is_set() and champion is not None and champion.name == self.name_:
                    self._on_champion(champion)
        finally:
            consumer.close()

    def _on_champion(self, mv: ModelVersion | None) -> None:
        if mv is None:
            return
        current = self.slot.model
        if current is not None and (current.version.version, current.version.sha256) == (
            mv.version,
            mv.sha256,
        ):
            return
        if (mv.version, mv.sha256) in self.rejected:
            return
        started = time.monotonic()
        try:
            model = load(mv, self._store, self.settings.intra_op_threads, self.settings.public_key)
        except ModelRejected as exc:
            self.rejected[(mv.version, mv.sha256)] = str(exc)
            self.metrics.swaps.labels(mv.name, "rejected", exc.reason).inc()
            serving = f"v{current.version.version}" if current else "nothing"
            log.error(
                "rejected %s v%d (%s): %s; still serving %s",
                mv.name,
                mv.version,
                exc.reason,
                exc,
                serving,
            )
            return
        old = self.slot.swap(model)
        elapsed = time.monotonic() - started
        self.metrics.swaps.labels(mv.name, "ok", "").inc()
        self.metrics.swap_seconds.labels(mv.name).observe(elapsed)
        self.metrics.model_version.labels(mv.name).set(mv.version)
        log.info(
            "now serving %s v%d (was %s), loaded in %.3fs",
            mv.name,
            mv.version,
            f"v{old.version.version}" if old else "none",
            elapsed,
        )
        del old  # the previous session is freed once the batch holding it finishes
