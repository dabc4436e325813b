"""Turn model outputs into predictions, and consumed offsets into the offsets to commit."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from driftline.schemas.batch import DecodedBatch
from driftline.schemas.deadletter import SCORING_FAILED, CodecError


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


def score_apart(
    predict: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]],
    batch: DecodedBatch,
) -> tuple[DecodedBatch, npt.NDArray[np.float32], list[tuple[int, CodecError]]]:
    """Score a batch whose scoring as a whole failed, half by half, down to the events that fail.

    Returns the events that scored (a sub-batch), their probabilities, and (position,
    scoring_failed) for each event that fails alone. A model that fails on everything costs
    about 2N calls once; one event that breaks it costs about 2 log2 N.
    """
    scored: list[npt.NDArray[np.intp]] = []
    parts: list[npt.NDArray[np.float32]] = []
    failures: list[tuple[int, CodecError]] = []
    todo: list[npt.NDArray[np.intp]] = []
    n = len(batch)
    if n > 1:
        todo = [np.arange(0, n // 2), np.arange(n // 2, n)]
    elif n == 1:
        todo = [np.arange(1)]
    while todo:
        rows = todo.pop()
        try:
            probs = predict(batch.inputs[rows])
        except Exception as exc:  # whatever the runtime raises for these inputs
            if len(rows) > 1:
                half = len(rows) // 2
                todo += [rows[:half], rows[half:]]
            else:
                i = int(rows[0])
                failures.append((batch.positions[i], CodecError(SCORING_FAILED, str(exc))))
            continue
        scored.append(rows)
        parts.append(probs)
    failures.sort(key=lambda item: item[0])
    if not scored:
        return batch.take(np.zeros(0, dtype=np.intp)), np.zeros((0, 0), np.float32), failures
    order = np.concatenate(scored)
    probs_all = np.concatenate(parts)
    sort = np.argsort(order, kind="stable")
    return batch.take(order[sort]), probs_all[sort], failures
