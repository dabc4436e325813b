"""Micro-batching: a batch closes at a maximum size or a maximum wait, whichever comes first.

As in Triton's dynamic batcher, the wait is counted from the first item of the batch, so an
idle stream is answered within max_wait and a busy one fills batches to max_size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    max_size: int
    max_wait_s: float

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError("max_size must be at least 1")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")


class Batcher(Generic[T]):
    """Collects items until the policy closes the batch; the caller supplies the clock."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._items: list[T] = []
        self._opened_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def room(self) -> int:
        """How many more items fit before the size limit."""
        return self.policy.max_size - len(self._items)

    def add(self, items: list[T], now: float) -> None:
        if items and self._opened_at is None:
            self._opened_at = now
        self._items.extend(items)

    def wait_s(self, now: float, idle_wait_s: float) -> float:
        """How long the caller may block for more items: the rest of the batch's wait."""
        if self._opened_at is None:
            return idle_wait_s
        return max(0.0, self._opened_at + self.policy.max_wait_s - now)

    def ready(self, now: float) -> bool:
        if not self._items:
            return False
        if len(self._items) >= self.policy.max_size:
            return True
        assert self._opened_at is not None
        return now - self._opened_at >= self.policy.max_wait_s - 1e-9

    def discard(self, drop: Callable[[T], bool]) -> int:
        """Remove the items `drop` selects (e.g. of partitions just revoked); returns how many."""
        kept = [item for item in self._items if not drop(item)]
        dropped = len(self._items) - len(kept)
        self._items = kept
        if not kept:
            self._opened_at = None
        return dropped

    def take(self) -> list[T]:
        items, self._items, self._opened_at = self._items, [], None
        return items


@dataclass(frozen=True)
class ChunkPolicy:
    """How a batch is cut into chunks so that decoding one overlaps scoring the previous.

    A batch is cut into as many chunks of at least `min_chunk` events as fit, up to
    `max_chunks`; `max_chunks` 1 (or a batch under two chunks' worth) keeps it whole, decoded
    and then scored in one piece.
    """

    min_chunk: int = 8
    max_chunks: int = 1

    def __post_init__(self) -> None:
        if self.min_chunk < 1 or self.max_chunks < 1:
            raise ValueError("min_chunk and max_chunks must be at least 1")

    def spans(self, n: int) -> list[tuple[int, int]]:
        """The (start, end) of each chunk of a batch of n, in order, sizes within one of each
        other (the smaller first: the first chunk is the one whose decoding nothing overlaps)."""
        k = max(1, min(self.max_chunks, n // self.min_chunk))
        small, larger = divmod(n, k)
        bounds = [0]
        for i in range(k):
            bounds.append(bounds[-1] + small + int(i >= k - larger))
        return list(itertools.pairwise(bounds))
