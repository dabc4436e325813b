"""Follow the model registry and hot-swap: load the new champion off the hot path, then swap.

The registry follower (runtime/registry.py) reads models.registry from the beginning (it is
compacted, so that is cheap), then keeps following it. Whenever the champion pointer of our
model names a version other than the one serving, the watcher fetches, verifies, checks and
warms that version in the follower's thread, and only then replaces the slot's reference.
The consumer reads the slot once per batch, so a swap lands between two batches; the old
session is released when the last batch using it is done. Any failure leaves the current
version serving and is logged and counted.
"""

from __future__ import annotations

import logging
import threading
import time

from driftline.schemas.messages import ModelVersion
from driftline.services.inference.metrics import InferenceMetrics
from driftline.services.inference.model import REJECT_UNEXPECTED, LoadedModel, ModelRejected, load
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.artifacts import ArtifactStore
from driftline.services.runtime.registry import SERVED_STATUSES, RegistryFollower, RegistrySnapshot

log = logging.getLogger(__name__)


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


class RegistryWatcher:
    """Keeps `slot` on the registry's champion for one model name.

    The registry follower reads the topic; this side decides. When the follower has caught
    up, the last champion pointer is loaded; after that, every pointer for our model that
    names another version than the one serving is loaded in the follower's thread, off the
    hot path, and swapped in only once it passed every check.
    """

    def __init__(
        self,
        settings: InferenceSettings,
        slot: ModelSlot,
        metrics: InferenceMetrics,
        store: ArtifactStore,
    ) -> None:
        self.settings = settings
        self.slot = slot
        self.metrics = metrics
        self.store = store
        self.name_ = settings.effective_model_name
        self.rejected: dict[tuple[int, str], str] = {}  # (version, sha256) -> why
        self.follower = RegistryFollower(
            settings.kafka,
            settings.kafka.topics.models_registry,
            f"{settings.effective_group_id}-registry",
            timeout_s=settings.registry_timeout_s,
            on_caught_up=self._on_caught_up,
            on_champion=self._on_pointer,
        )

    @property
    def error(self) -> BaseException | None:
        return self.follower.error

    @property
    def caught_up(self) -> threading.Event:
        return self.follower.caught_up

    def start(self) -> None:
        self.follower.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.follower.stop(timeout_s)

    def _on_pointer(self, mv: ModelVersion) -> None:
        if mv.name == self.name_:
            self._on_champion(mv)

    def _on_caught_up(self, snapshot: RegistrySnapshot) -> None:
        """Serve the champion, or else the newest version that served before and verifies."""
        candidates = start_candidates(snapshot, self.name_)
        for mv in candidates:
            if self._on_champion(mv):
                if mv is not candidates[0]:
                    log.warning(
                        "serving %s v%d, the newest earlier version that verifies: the champion "
                        "v%d was rejected (%s)",
                        mv.name,
                        mv.version,
                        candidates[0].version,
                        self.rejected.get((candidates[0].version, candidates[0].sha256), "?"),
                    )
                return
        if candidates:
            log.error(
                "no version of %s verifies (%s); not ready, waiting for a new champion",
                self.name_,
                "; ".join(f"v{v}: {why}" for (v, _), why in self.rejected.items()),
            )
        else:
            log.warning(
                "the registry has no champion of %s yet; not ready, waiting for one "
                "(train one with `driftline train --bootstrap`)",
                self.name_,
            )

    def _on_champion(self, mv: ModelVersion | None) -> bool:
        """Load and swap in `mv`; True when it serves (now or already), False if refused."""
        if mv is None:
            return False
        current = self.slot.model
        if current is not None and (current.version.version, current.version.sha256) == (
            mv.version,
            mv.sha256,
        ):
            return True
        if (mv.version, mv.sha256) in self.rejected:
            return False
        started = time.monotonic()
        try:
            model = load(mv, self.store, self.settings.intra_op_threads, self.settings.public_key)
        except Exception as exc:  # any failure to load a candidate is its rejection
            reason = exc.reason if isinstance(exc, ModelRejected) else REJECT_UNEXPECTED
            self.rejected[(mv.version, mv.sha256)] = f"{reason}: {exc}"
            self.metrics.swaps.labels(mv.name, "rejected", reason).inc()
            serving = f"v{current.version.version}" if current else "nothing"
            log.error(
                "rejected %s v%d (%s): %s; still serving %s",
                mv.name,
                mv.version,
                reason,
                exc,
                serving,
                exc_info=not isinstance(exc, ModelRejected),
                extra={"model": mv.name, "model_version": mv.version, "reason": reason},
            )
            return False
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
            extra={
                "model": mv.name,
                "model_version": mv.version,
                "previous_version": old.version.version if old else None,
                "load_seconds": round(elapsed, 3),
            },
        )
        del old  # the previous session is freed once the batch holding it finishes
        return True


def start_candidates(snapshot: RegistrySnapshot, name: str) -> list[ModelVersion]:
    """What a starting consumer tries, in order: the champion pointer, then every other
    version of the model that served (champion or retired), newest first. Versions the gate
    rejected never served and are not tried."""
    pointer = snapshot.champions.get(name)
    served = sorted(
        (
            mv
            for mv in snapshot.versions.get(name, {}).values()
            if mv.status in SERVED_STATUSES and (pointer is None or mv.version != pointer.version)
        ),
        key=lambda mv: mv.version,
        reverse=True,
    )
    return ([pointer] if pointer is not None else []) + served
