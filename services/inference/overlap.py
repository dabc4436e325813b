"""Decode and score a batch, in chunks that overlap: ONNX Runtime scores one chunk in a worker
thread (it releases the GIL while it runs) while the handler's thread decodes the next.

Whether a batch is scored whole or in chunks, what comes out is the same: the events with
finite scores in batch order, their probabilities, and the failures in the order the whole
batch's path lists them (undecodable, then unscorable, then non-finite, each by position).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from driftline.schemas import deadletter as dl
from driftline.schemas.batch import DecodedBatch
from driftline.services.core.scoring import score_apart

log = logging.getLogger(__name__)

Predict = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
Decode = Callable[[Sequence[bytes | None], Sequence[str | None]], DecodedBatch]
Failures = list[tuple[int, dl.CodecError]]


@dataclass(frozen=True)
class Scored:
    """A batch (or a chunk of one) decoded and scored: the events that scored, with their
    probabilities, and the failures by position in the consumed batch."""

    event_ids: list[str]
    asset_ids: list[str]
    event_time_ms: npt.NDArray[np.int64]
    probs: npt.NDArray[np.float32]
    undecodable: Failures
    unscorable: Failures
    non_finite: Failures
    decoded: int
    inference_s: float  # time in the model (ONNX Runtime), splits included

    def __len__(self) -> int:
        return len(self.event_ids)

    @property
    def failures(self) -> Failures:
        """Every failure, in the order its dead letters are produced."""
        return self.undecodable + self.unscorable + self.non_finite


def score(predict: Predict, batch: DecodedBatch) -> Scored:
    """Score a decoded batch; one that fails as a whole is split down to the events that fail,
    and an event whose scores are not all finite numbers is a failure too (no score)."""
    decoded = len(batch)
    undecodable = list(batch.failures)
    unscorable: Failures = []
    non_finite: Failures = []
    probs = np.zeros((0, 0), dtype=np.float32)
    inference_s = 0.0
    if decoded:
        t0 = time.perf_counter()
        try:
            probs = predict(batch.inputs)
        except Exception as exc:  # a model that cannot score this batch: find who fails
            log.warning("scoring failed for %d events (%s); splitting the batch", decoded, exc)
            batch, probs, unscorable = score_apart(predict, batch)
        inference_s = time.perf_counter() - t0
        bad = ~np.isfinite(probs).all(axis=1) if len(probs) else np.zeros(0, dtype=bool)
        if bad.any():
            non_finite = [
                (batch.positions[i], dl.CodecError(dl.SCORING_FAILED, "non-finite scores"))
                for i in np.flatnonzero(bad).tolist()
            ]
            keep = np.flatnonzero(~bad)
            batch, probs = batch.take(keep), probs[keep]
    return Scored(
        batch.event_ids,
        batch.asset_ids,
        batch.event_time_ms,
        probs,
        undecodable,
        unscorable,
        non_finite,
        decoded,
        inference_s,
    )


def join(parts: Sequence[Scored]) -> Scored:
    """Consecutive chunks' outcomes as the whole batch's (each kind of failure stays in
    position order, since the chunks are consecutive)."""
    if len(parts) == 1:
        return parts[0]
    scored = [p for p in parts if len(p)]
    return Scored(
        [e for p in scored for e in p.event_ids],
        [a for p in scored for a in p.asset_ids],
        np.concatenate([p.event_time_ms for p in scored])
        if scored
        else np.zeros(0, dtype=np.int64),
        np.concatenate([p.probs for p in scored]) if scored else np.zeros((0, 0), np.float32),
        [f for p in parts for f in p.undecodable],
        [f for p in parts for f in p.unscorable],
        [f for p in parts for f in p.non_finite],
        sum(p.decoded for p in parts),
        sum(p.inference_s for p in parts),
    )


def _shifted(batch: DecodedBatch, start: int) -> DecodedBatch:
    """A chunk's decoded batch with positions counted from the start of the whole batch."""
    if start == 0:
        return batch
    return dataclasses.replace(
        batch,
        positions=[p + start for p in batch.positions],
        failures=[(p + start, e) for p, e in batch.failures],
    )


def decode_and_score(
    decode: Decode,
    predict: Predict,
    values: Sequence[bytes | None],
    content_types: Sequence[str | None],
    spans: Sequence[tuple[int, int]],
    begin: Callable[[], None],
    pool: Executor | None,
) -> Scored:
    """Decode the batch and score it, chunk by chunk as `spans` cut it: each chunk's scoring
    goes to `pool` (one thread: chunks are scored in order) while the next is decoded here.
    One span, or no pool, is the batch decoded and then scored whole, in this thread.

    `begin` (the delivery's batch start) is called once, after the first chunk is decoded and
    before anything is scored, as the whole batch's path calls it between the two.
    """
    if len(spans) == 1 or pool is None:
        batch = decode(values, content_types)
        begin()
        return score(predict, batch)
    pending: list[Future[Scored]] = []
    try:
        for start, end in spans:
            chunk = _shifted(decode(values[start:end], content_types[start:end]), start)
            if not pending:
                begin()
            pending.append(pool.submit(score, predict, chunk))
    finally:
        wait(pending)  # nothing of this batch is still being scored once this returns or raises
    return join([f.result() for f in pending])
