"""freeze_heap: what is alive when a service is ready is no longer walked by full passes."""

from __future__ import annotations

import gc

from driftline.services.runtime.heap import freeze_heap


def test_objects_alive_at_readiness_are_frozen_and_later_ones_are_not() -> None:
    held = [[i] for i in range(10_000)]  # a service's long-lived state
    try:
        frozen = freeze_heap()
        assert frozen >= len(held)
        assert gc.get_freeze_count() == frozen
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in tracked for o in held[:100])  # out of every generation
        later = [[0]]  # made after readiness: collected as usual
        assert id(later[0]) in {id(o) for o in gc.get_objects()}
    finally:
        gc.unfreeze()
