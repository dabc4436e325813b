"""The training set: a bounded, time-ordered buffer of labelled examples per modality.

Each example remembers the training.windows partition and offset it came from, so a model
version's lineage can name exactly which offset ranges trained it, and a restarted trainer can
rebuild the buffer by re-reading from those offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from driftline.schemas.messages import OffsetRange

# Trim only once the buffer is this much over capacity, so trimming (a sort) is amortised.
TRIM_SLACK = 0.1


@dataclass(frozen=True)
class Example:
    event_time_ms: int
    partition: int
    offset: int
    label: int
    x: npt.NDArray[np.float32] | npt.NDArray[np.uint8]
    served_version: int = -1  # the model version that served this event, -1 if unknown
    served_correct: bool = False


@dataclass(frozen=True)
class Outcomes:
    """What was served for the buffered examples, as arrays (change-point detection)."""

    event_time_ms: npt.NDArray[np.int64]
    served_version: npt.NDArray[np.int64]
    served_correct: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class LabelledSet:
    """Stacked examples ordered by event time (then partition and offset)."""

    x: npt.NDArray[np.float32] | npt.NDArray[np.uint8]
    y: npt.NDArray[np.int64]
    event_time_ms: npt.NDArray[np.int64]
    partitions: npt.NDArray[np.int64]
    offsets: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: npt.NDArray[np.int64]) -> LabelledSet:
        return LabelledSet(
            self.x[idx],
            self.y[idx],
            self.event_time_ms[idx],
            self.partitions[idx],
            self.offsets[idx],
        )

    def ranges(self) -> list[OffsetRange]:
        """Per partition, the offsets [first, last + 1) these examples came from."""
        out = []
        for p in np.unique(self.partitions).tolist():
            offs = self.offsets[self.partitions == p]
            out.append(
                OffsetRange(
                    partition=int(p), start_offset=int(offs.min()), end_offset=int(offs.max()) + 1
                )
            )
        return out

    @staticmethod
    def from_arrays(
        x: npt.NDArray[np.float32] | npt.NDArray[np.uint8],
        y: npt.NDArray[np.int64],
        event_time_ms: npt.NDArray[np.int64] | None = None,
    ) -> LabelledSet:
        """Arrays already in time order (simulated data): times and offsets are the positions."""
        n = len(y)
        pos = np.arange(n, dtype=np.int64)
        times = pos if event_time_ms is None else event_time_ms.astype(np.int64)
        return LabelledSet(x, y.astype(np.int64), times, np.zeros(n, dtype=np.int64), pos)


class TrainingBuffer:
    """At most `capacity` examples; past it, the oldest by event time are dropped."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: list[Example] = []
        self._span: tuple[int, int] | None = None

    def __len__(self) -> int:
        return min(len(self._items), self.capacity)

    def add(self, example: Example) -> None:
        self._items.append(example)
        if self._span is not None:
            t = example.event_time_ms
            self._span = (min(self._span[0], t), max(self._span[1], t))
        if len(self._items) > self.capacity * (1 + TRIM_SLACK):
            self._trim()

    def _trim(self) -> None:
        self._items.sort(key=lambda e: (e.event_time_ms, e.partition, e.offset))
        excess = max(0, len(self._items) - self.capacity)
        if excess:
            del self._items[:excess]
            self._span = None

    def outcomes(self) -> Outcomes:
        """Event time, serving version and correctness of every buffered example."""
        self._trim()
        items = self._items
        n = len(items)
        return Outcomes(
            event_time_ms=np.fromiter((e.event_time_ms for e in items), dtype=np.int64, count=n),
            served_version=np.fromiter((e.served_version for e in items), dtype=np.int64, count=n),
            served_correct=np.fromiter((e.served_correct for e in items), dtype=np.bool_, count=n),
        )

    def span(self) -> tuple[int, int] | None:
        """Event times (oldest, newest) of the buffered examples, None when empty."""
        if not self._items:
            return None
        if self._span is None:
            times = [e.event_time_ms for e in self._items]
            self._span = (min(times), max(times))
        return self._span

    def snapshot(self) -> LabelledSet:
        """The buffered examples (at most capacity, the newest), stacked and time-ordered."""
        self._trim()
        items = self._items
        if not items:
            raise ValueError("the training buffer is empty")
        return LabelledSet(
            x=np.stack([e.x for e in items]),  # type: ignore[arg-type]
            y=np.fromiter((e.label for e in items), dtype=np.int64, count=len(items)),
            event_time_ms=np.fromiter(
                (e.event_time_ms for e in items), dtype=np.int64, count=len(items)
            ),
            partitions=np.fromiter((e.partition for e in items), dtype=np.int64, count=len(items)),
            offsets=np.fromiter((e.offset for e in items), dtype=np.int64, count=len(items)),
        )
