"""Turn model outputs into predictions, and consumed offsets into the offsets to commit."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt


def top1(
    probabilities: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Index and probability of the most likely class, per row."""
    index = probabilities.argmax(axis=1).astype(np.int64)
    confidence = probabilities[np.arange(len(probabilities)), index].astype(np.float32)
    return index, confidence


def commit_offsets(consumed: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int], int]:
    """The offset to commit per (topic, partition): one past the highest consumed offset.

    Kafka's committed offset is the next record to read, so committing max + 1 after a batch
    is fully delivered marks every record of the batch done and none beyond it.
    """
    out: dict[tuple[str, int], int] = {}
    for topic, partition, offset in consumed:
        key = (topic, partition)
        if offset + 1 > out.get(key, -1):
            out[key] = offset + 1
    return out


def rewind_offsets(consumed: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int], int]:
    """The first consumed offset per (topic, partition): where to seek to retry a failed batch."""
    out: dict[tuple[str, int], int] = {}
    for topic, partition, offset in consumed:
        key = (topic, partition)
        if key not in out or offset < out[key]:
            out[key] = offset
    return out
