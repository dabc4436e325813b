"""Keep the garbage collector's full passes off a service's hot path.

CPython's cyclic collector now and then walks every object a process holds. A service holds
hundreds of thousands once its libraries, settings and model are loaded (the inference
consumer about 480,000 beside a bench's preloaded events): a full pass then stops the batch
loop for a quarter to more than a second on this kind of machine, and every event in flight
waits for it (the tail of the latency). What exists once a service is ready lives as long as
the service, so it is frozen: moved out of the collector's generations, never walked again.
Objects made later (batches, a swapped-in model) are collected as usual; frozen ones are
still freed when nothing refers to them.
"""

from __future__ import annotations

import gc


def freeze_heap() -> int:
    """Collect what is garbage now, then freeze everything alive; returns how many objects
    the collector will not walk again."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
