"""Inference as a batch handler: decode, score, encode, deliver, for the shared batch loop.

The handler sees a batch of records and nothing of the consumer group: the loop in
`runtime/batchloop.py` owns polling, rebalances and rewinds. It reads the serving model once
per batch (a hot swap lands between two batches), so every result of a batch names the one
version that scored it. Which guarantee the commit gives is the Delivery's business
(delivery.py): at-least-once, exactly-once, or in memory for tests and benches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from confluent_kafka import Consumer, Message, TopicPartition

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.batch import DecodedBatch
from driftline.schemas.messages import MODALITY_IMAGE, ModelVersion
from driftline.schemas.result_batch import ResultEncoder
from driftline.services.core.batching import ChunkPolicy
from driftline.services.core.scoring import top1
from driftline.services.inference.delivery import Delivery, for_settings
from driftline.services.inference.metrics import InferenceMetrics
from driftline.services.inference.overlap import Scored, decode_and_score
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.batchloop import Offsets, RewindBatch
from driftline.services.runtime.deadletters import describe, dlq_record
from driftline.services.runtime.kafka import spans

log = logging.getLogger(__name__)

_AVRO_HEADERS = list(h.AVRO)
# Batches of photos from 16 up are cut into 2 to 8 chunks (of 8 at the default batch of 64):
# the first chunk's decoding is the one nothing overlaps, and a chunk of 8 photos is still
# scored at ONNX Runtime's full-batch cost per photo.
PHOTO_CHUNKING = ChunkPolicy(min_chunk=8, max_chunks=8)


def _content_type(headers: h.Headers) -> str | None:
    # Most records carry exactly driftline's own Avro header: one list comparison, in C.
    if headers == _AVRO_HEADERS:
        return h.CONTENT_TYPE_AVRO
    return codec.content_type_of(headers)


class Decoder(Protocol):
    """Turns a batch of record values into model inputs plus failures by position.

    Each record is decoded on its own, so decoding a slice of a batch gives that slice of the
    whole batch's decoding (the handler decodes photos in chunks)."""

    def __call__(
        self,
        values: Sequence[bytes | None],
        content_types: Sequence[str | None],
        input_shape: tuple[int, ...],
        /,
    ) -> DecodedBatch: ...


class ModelRunner(Protocol):
    """A model that serves: the version it is, and its batch scoring."""

    @property
    def version(self) -> ModelVersion: ...

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...


class ModelSource(Protocol):
    """Where the serving model is read, once per batch (the slot a registry follower fills)."""

    @property
    def model(self) -> ModelRunner | None: ...


@dataclass(frozen=True)
class Marks:
    """When (wall clock, seconds) a batch reached each stage: taken from the loop, decoded
    and scored, its results encoded and handed to the producer, its commit issued; and where
    it started and ended in each partition (first offset, next offset). For benches that
    split latency into stages; a few clock reads per batch."""

    taken_s: float
    scored_s: float
    produced_s: float
    committed_s: float
    spans: dict[tuple[str, int], tuple[int, int]]


@dataclass(frozen=True)
class BatchStats:
    consumed: int
    scored: int
    dead_lettered: int
    model_version: int
    inference_s: float
    marks: Marks | None = None


class InferenceHandler:
    """Scores one modality's records with whatever model the source holds."""

    def __init__(
        self,
        settings: InferenceSettings,
        source_base: str,
        decoder: Decoder,
        models: ModelSource,
        metrics: InferenceMetrics,
        delivery: Delivery | None = None,
        chunking: ChunkPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.decoder = decoder
        self.models = models
        self.metrics = metrics
        self.delivery = delivery
        topics = settings.kafka.topics
        self.modality = settings.modality
        self.source = topics.name(source_base)
        self.results_topic = topics.inference_results
        self.dlq_topic = topics.dlq(source_base)
        self._result_encoder: ResultEncoder | None = None
        self._encoder_key: tuple[str, int, tuple[str, ...]] | None = None
        # A photo takes over 100 us to decode, a sensor window a few: only photos are worth
        # decoding while the model scores (see overlap.py).
        self.chunking = chunking or (
            PHOTO_CHUNKING if settings.modality == MODALITY_IMAGE else ChunkPolicy()
        )
        self._pool: ThreadPoolExecutor | None = None

    def _scoring_pool(self) -> ThreadPoolExecutor:
        """The one thread that scores a chunk while the next is decoded (made on first use)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="driftline-score")
        return self._pool

    def _delivery(self) -> Delivery:
        if self.delivery is None:
            raise RuntimeError("the handler delivers only once started")
        return self.delivery

    # The loop's side of the handler.

    def start(self, consumer: Consumer) -> None:
        if self.delivery is None:
            self.delivery = for_settings(self.settings, consumer)

    def assigned(
        self, _consumer: Consumer, _parts: list[TopicPartition]
    ) -> list[TopicPartition] | None:
        return None  # the committed offsets are where scoring resumes

    def revoked(self, _parts: list[TopicPartition]) -> Offsets | None:
        # Scored batches still waiting for their acks are finished and committed now, while
        # the partitions are still ours; if that fails they are replayed by their next owner
        # (and, for partitions we keep, by us after a rewind).
        if self.delivery is None:
            return None
        try:
            self.delivery.drain()
        except RewindBatch as exc:
            log.warning("in-flight batches not committed at revocation: %s", exc)
            return exc.rewind
        return None

    def idle(self) -> None:
        self._delivery().idle()

    def recover(self, waited_s: float) -> None:
        self._delivery().recover(waited_s)

    def abandon(self) -> None:
        self._delivery().abandon()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self.delivery is not None:
            self.delivery.close()
            self.delivery = None

    def handle(self, msgs: list[Message]) -> BatchStats:
        """Score one batch, dead-letter its bad records, deliver everything, then commit."""
        taken_s = time.time()
        delivery = self._delivery()
        good = [m for m in msgs if m.error() is None]
        if len(good) != len(msgs):
            for m in msgs:
                if m.error() is not None:
                    log.warning("consumer error: %s", m.error())
        model = self.models.model  # one reference per batch: a swap lands between batches
        if model is None:
            raise RuntimeError("the service starts consuming only once a model is loaded")
        if not good:
            return BatchStats(len(msgs), 0, 0, model.version.version, 0.0)
        self.metrics.consumed.labels(self.source).inc(len(good))
        # Inputs are decoded to the serving version's own per-event shape (its I/O signature,
        # checked against its graph at load): an image model says the size photos resize to.
        mv = model.version
        shape = tuple(mv.inputs[0].shape[1:]) if mv.inputs else ()

        def decode(values: Sequence[bytes | None], types: Sequence[str | None]) -> DecodedBatch:
            return self.decoder(values, types, shape)

        # Photos are decoded chunk by chunk while the previous chunk is scored (overlap.py),
        # all with the one model read above; the outcome is the whole batch's, in its order.
        chunks = self.chunking.spans(len(good))
        scored = decode_and_score(
            decode,
            model.predict,
            [m.value() for m in good],
            [_content_type(m.headers()) for m in good],
            chunks,
            delivery.begin,
            self._scoring_pool() if len(chunks) > 1 else None,
        )
        failures = scored.failures
        inference_s = scored.inference_s
        scored_s = produced_s = taken_s
        if scored.decoded:
            scored_s = time.time()
            if len(scored):
                self._produce_results(delivery, scored, mv)
                self.metrics.inference_seconds.labels(self.modality).observe(inference_s)
                self.metrics.batch_size.labels(self.modality).observe(len(scored))
            produced_s = time.time()
        for pos, error in failures:
            self._dead_letter(delivery, good[pos], error)
        parts = spans(good)
        delivery.commit(
            [TopicPartition(t, p, end) for (t, p), (_, end) in parts.items()],
            {key: start for key, (start, _) in parts.items()},
        )
        marks = Marks(taken_s, scored_s, produced_s, time.time(), parts)
        return BatchStats(
            len(good), len(good) - len(failures), len(failures), mv.version, inference_s, marks
        )

    def _encoder(self, mv: ModelVersion) -> ResultEncoder:
        """The result encoder of the serving version (built again only after a swap)."""
        key = (mv.name, mv.version, tuple(mv.classes))
        if self._encoder_key != key or self._result_encoder is None:
            self._result_encoder = ResultEncoder(
                modality=self.modality,
                model_name=mv.name,
                model_version=mv.version,
                classes=mv.classes,
            )
            self._encoder_key = key
        return self._result_encoder

    def _produce_results(self, delivery: Delivery, scored: Scored, mv: ModelVersion) -> None:
        classes, probs, times = mv.classes, scored.probs, scored.event_time_ms
        index, confidence = top1(probs)
        now_ms = int(time.time() * 1000)
        # One Avro record per event is the contract; the fields a batch shares are encoded
        # once, and what is left per event is a join of byte strings (result_batch.py).
        values = self._encoder(mv).encode(
            scored.event_ids, scored.asset_ids, times, probs, index, confidence, now_ms
        )
        delivery.produce_all(self.results_topic, scored.asset_ids, values, h.AVRO)
        m = self.metrics
        m.produced.labels(self.results_topic).inc(len(scored))
        counts = np.bincount(index, minlength=len(classes))
        for c in np.flatnonzero(counts).tolist():
            m.predictions.labels(mv.name, classes[c]).inc(int(counts[c]))
        m.confidence.observe_many((mv.name, str(mv.version)), confidence)
        m.end_to_end.observe_many((self.modality,), (now_ms - times).clip(0) / 1000.0)

    def _dead_letter(self, delivery: Delivery, msg: Message, error: dl.CodecError) -> None:
        rec = dlq_record(msg, error, self.settings.service_name)
        delivery.produce(self.dlq_topic, rec.key, rec.value, rec.headers)
        self.metrics.dead_letters.labels(rec.envelope.source_topic, error.error_class).inc()
        log.info(describe(rec.envelope))
