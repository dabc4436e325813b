"""How a batch's outputs and input offsets reach Kafka: at-least-once or exactly-once.

At-least-once: results and dead letters are produced, the producer is flushed and every
delivery report checked, and only then are the input offsets committed. A crash in between
replays the batch (duplicates possible, loss impossible).

In memory: outputs and commits are kept in lists, for tests and benches of the handler
without a broker.

Exactly-once: each batch is one Kafka transaction holding its results, its dead letters and
its input offsets (send_offsets_to_transaction with the consumer's group metadata). Readers
with isolation.level=read_committed see each batch whole or not at all, never twice.
The transactional id is stable per instance, so a restarted instance fences its previous
incarnation and aborts its open transaction immediately instead of after the timeout.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from driftline.schemas import headers as h
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.batchloop import Offsets, RewindBatch
from driftline.services.runtime.kafka import RenewableProducer, producer

log = logging.getLogger(__name__)

# Seconds the group's committed offsets may stay unstable while an exactly-once consumer
# recovers before it clears its own orphaned pending offset commits (ExactlyOnce.recover).
PENDING_CLEAR_AFTER_S = 6.0


class Delivery(Protocol):
    def begin(self) -> None: ...
    def produce(
        self, topic: str, key: bytes | str | None, value: bytes | None, headers: h.HeaderList
    ) -> None: ...
    def produce_all(
        self, topic: str, keys: Sequence[str], values: Sequence[bytes], headers: h.HeaderList
    ) -> None: ...
    def commit(self, offsets: list[TopicPartition], starts: Offsets) -> None: ...
    def drain(self) -> None: ...
    def idle(self) -> None: ...
    def recover(self, waited_s: float) -> None: ...
    def abandon(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class _InFlight:
    """One batch whose outputs are produced and whose offsets wait for their acks."""

    offsets: list[TopicPartition] = field(default_factory=list)
    starts: Offsets = field(default_factory=dict)
    produced: int = 0
    acked: int = 0
    error: str | None = None
    fatal: KafkaError | None = None

    def on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is None:
            self.acked += 1
            return
        if self.error is None:
            self.error = str(err)
        if err.fatal():
            self.fatal = err

    @property
    def done(self) -> bool:
        return self.error is not None or self.acked >= self.produced


class AtLeastOnce:
    """Commit a batch's input offsets only once every one of its outputs is acknowledged.

    Pipelined: while batch k's outputs travel to the broker, batch k+1 is decoded and scored.
    Offsets are committed strictly in batch order, each only after all of that batch's
    delivery reports came back without error. When one fails, every batch still in flight
    is given up and the consumer rewinds to the oldest one's first offsets: outputs may be
    sent twice (at-least-once), none is skipped. At most MAX_IN_FLIGHT batches wait.
    """

    MAX_IN_FLIGHT = 2

    def __init__(self, settings: InferenceSettings, consumer: Consumer) -> None:
        self.consumer = consumer
        overrides: dict[str, Any] = {"linger.ms": settings.linger_ms}
        self.renewable = RenewableProducer(settings.kafka, None, **overrides)
        self.in_flight: deque[_InFlight] = deque()
        self.current = _InFlight()

    def begin(self) -> None:
        self.current = _InFlight()

    def produce(
        self, topic: str, key: bytes | str | None, value: bytes | None, headers: h.HeaderList
    ) -> None:
        self.current.produced += 1
        self.producer.produce(
            topic, key=key, value=value, headers=headers, on_delivery=self.current.on_delivery
        )

    def produce_all(
        self, topic: str, keys: Sequence[str], values: Sequence[bytes], headers: h.HeaderList
    ) -> None:
        """A batch's results: one produce call each, with nothing else done per record."""
        produce, report = self.producer.produce, self.current.on_delivery
        for key, value in zip(keys, values, strict=True):
            produce(topic, key=key, value=value, headers=headers, on_delivery=report)
        # Counted once: a produce that raises fails the batch, and abandon() starts afresh.
        self.current.produced += len(values)

    def commit(self, offsets: list[TopicPartition], starts: Offsets) -> None:
        self.current.offsets, self.current.starts = offsets, starts
        self.in_flight.append(self.current)
        self.current = _InFlight()
        self.producer.poll(0)
        while len(self.in_flight) > self.MAX_IN_FLIGHT and not self.in_flight[0].done:
            self.producer.poll(0.05)
        self._settle()

    def _settle(self) -> None:
        while self.in_flight and self.in_flight[0].done:
            batch = self.in_flight[0]
            if batch.error is not None:
                self._give_up(f"outputs not delivered: {batch.error}")
            # Acknowledged: the commit may be asynchronous. If it is lost, the batch is
            # replayed (a duplicate), never skipped.
            self.consumer.commit(offsets=batch.offsets, asynchronous=True)
            self.in_flight.popleft()

    @property
    def producer(self) -> Producer:
        return self.renewable.producer

    def _give_up(self, why: str) -> None:
        for batch in self.in_flight:
            self.renewable.note(batch.fatal)
        self.renewable.renew_if_fatal()
        rewind: Offsets = {}
        for batch in self.in_flight:
            for key, offset in batch.starts.items():
                rewind[key] = min(offset, rewind.get(key, offset))
        self.in_flight.clear()
        raise RewindBatch(why, rewind)

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait for every batch in flight and commit it (on revocation and at shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            self.producer.poll(0.05)
            self._settle()
        if self.in_flight:
            self._give_up(f"{len(self.in_flight)} batches unacknowledged after {timeout_s}s")

    def recover(self, waited_s: float) -> None:
        """Nothing to settle before reading again: offsets are committed by the consumer."""

    def idle(self) -> None:
        """No batch to take: serve delivery reports and commit what they completed, so an idle
        stream's last batch is committed within a poll, not when the next batch comes."""
        if self.in_flight:
            self.producer.poll(0)
            self._settle()

    def abandon(self) -> None:
        # Outputs already produced stay produced; the replay may duplicate them. A producer
        # that went fatal is replaced, or every later batch would fail the same way.
        self.current = _InFlight()
        self.renewable.renew_if_fatal()

    def close(self) -> None:
        try:
            self.drain(10.0)
        except RewindBatch as exc:
            log.warning("closing with batches uncommitted (they will be replayed): %s", exc)


class ExactlyOnce:
    """One transaction per batch: outputs and input offsets commit together or not at all.

    Every transactional call is bounded (`transaction_call_timeout_s` for a batch's commit and
    for a new producer's set-up), so no broker fault can hold the consumer's thread, and each
    failure is handled by its class:

    - retriable (a timed-out or interrupted request): the call is made again until the batch's
      time is spent;
    - abortable (the transaction failed but the producer lives): abort, rewind the batch;
    - fatal, or out of time, or an abort that fails: the outcome of the transaction is not
      known. The producer is dropped; the next batch builds a new one, whose
      init_transactions fences the old one and settles its transaction. The consumer then
      reads again from the group's committed offsets, which say whether the batch landed.
    """

    def __init__(self, settings: InferenceSettings, consumer: Consumer) -> None:
        self.settings = settings
        self.consumer = consumer
        self.timeout_s = settings.transaction_call_timeout_s
        self.pending_clears = 0
        self._cleared_at = -math.inf
        self._producer: Producer | None = None
        self._producer = self._new_producer()

    @property
    def producer(self) -> Producer:
        if self._producer is None:  # dropped after a fault: set up a new one (bounded)
            self._producer = self._new_producer()
        return self._producer

    def _new_producer(self) -> Producer:
        prod = producer(
            self.settings.kafka,
            **{
                "transactional.id": self.settings.transactional_id,
                "transaction.timeout.ms": self.settings.transaction_timeout_ms,
                "linger.ms": self.settings.linger_ms,
            },
        )
        deadline = time.monotonic() + self.timeout_s
        try:
            _bounded(prod.init_transactions, deadline, "init_transactions")
        except KafkaException as exc:
            # Not kept: a producer left with a pending InitProducerId would fence the next one.
            _release(exc)
            del prod
            raise
        return prod

    def _drop(self, why: object) -> None:
        log.error("rebuilding the transactional producer: %s", why)
        old, self._producer = self._producer, None
        if old is not None:
            # What it still holds is part of a transaction that will not commit. Released
            # here, its librdkafka instance is destroyed now: left to the garbage collector it
            # would go on retrying the failed transaction's requests after the broker returns.
            with contextlib.suppress(KafkaException, RuntimeError):
                old.purge(in_queue=True, in_flight=True)
            del old

    def begin(self) -> None:
        self.producer.begin_transaction()

    def produce(
        self, topic: str, key: bytes | str | None, value: bytes | None, headers: h.HeaderList
    ) -> None:
        self.producer.produce(topic, key=key, value=value, headers=headers)

    def produce_all(
        self, topic: str, keys: Sequence[str], values: Sequence[bytes], headers: h.HeaderList
    ) -> None:
        produce = self.producer.produce
        for key, value in zip(keys, values, strict=True):
            produce(topic, key=key, value=value, headers=headers)

    def commit(self, offsets: list[TopicPartition], starts: Offsets) -> None:
        del starts  # an aborted transaction rewinds to the current batch's own first offsets
        deadline = time.monotonic() + self.timeout_s
        try:
            meta = self.consumer.consumer_group_metadata()
            self._send_offsets(offsets, meta, deadline)
            _bounded(self.producer.commit_transaction, deadline, "commit_transaction")
        except KafkaException as exc:
            _release(exc)
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.txn_requires_abort() and not err.fatal():
                if self._abort(deadline):
                    raise RewindBatch(f"transaction aborted: {err}") from None
            else:
                self._drop(err)
            raise RewindBatch(f"transaction outcome unknown: {err}", from_committed=True) from None

    def _send_offsets(self, offsets: list[TopicPartition], meta: object, deadline: float) -> None:
        # Through self.producer, not a local: no frame of a failed batch keeps a dropped
        # producer (and its librdkafka threads, still retrying) alive.
        _bounded(
            lambda t: self.producer.send_offsets_to_transaction(offsets, meta, t),
            deadline,
            "send_offsets_to_transaction",
        )

    def _abort(self, deadline: float) -> bool:
        """Abort the open transaction; False (and the producer dropped) if that fails."""
        prod = self._producer
        if prod is None:
            return False
        try:
            _bounded(prod.abort_transaction, deadline, "abort_transaction")
            return True
        except KafkaException as exc:
            _release(exc)
            del prod
            self._drop(f"abort failed: {exc}")
            return False

    def drain(self) -> None:
        """Nothing waits between batches: each transaction is committed before the next."""

    def idle(self) -> None:
        """Nothing waits between batches."""

    def recover(self, waited_s: float) -> None:
        """Before reading again from the committed offsets: a dropped producer is replaced now,
        since the new one's init_transactions is what fences the old one and settles its open
        transaction, and until then the group's committed offsets are not stable.

        If they stay unstable (waited_s past PENDING_CLEAR_AFTER_S), a transactional offset
        commit of this instance's producer id is pending with no transaction left to settle
        it: the broker took it after init_transactions had fenced the failed batch's
        transaction (a request of the dropped producer, retried when the broker came back).
        Only a transaction marker of that producer id clears it, so one empty transaction
        that commits offsets for the assigned partitions is begun and aborted. Its abort
        marker discards every pending offset commit of this producer id, and nothing of this
        instance was waiting to commit: the batch that failed is read again from the
        committed offsets. Another instance's pending commits are left as they are.
        """
        _ = self.producer
        now = time.monotonic()
        if waited_s >= PENDING_CLEAR_AFTER_S and now - self._cleared_at >= PENDING_CLEAR_AFTER_S:
            self._cleared_at = now
            self._clear_pending()

    def _clear_pending(self) -> None:
        # The offsets are never committed (the transaction is aborted); any valid one will do.
        parts = [TopicPartition(tp.topic, tp.partition, 0) for tp in self.consumer.assignment()]
        if not parts:
            return
        log.warning(
            "the group's committed offsets are still unstable: aborting an empty transaction "
            "of this instance to clear its orphaned pending offset commits (%d partitions)",
            len(parts),
        )
        deadline = time.monotonic() + self.timeout_s
        try:
            self.producer.begin_transaction()
            self._send_offsets(parts, self.consumer.consumer_group_metadata(), deadline)
            _bounded(self.producer.abort_transaction, deadline, "abort_transaction")
        except KafkaException as exc:
            _release(exc)
            self._drop(f"clearing pending offset commits failed: {exc}")
            return
        self.pending_clears += 1

    def abandon(self) -> None:
        """A batch failed before its commit: abort its transaction (or drop the producer)."""
        if self._producer is not None:
            self._abort(time.monotonic() + self.timeout_s)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(min(self.timeout_s, 10.0))


def _release(exc: BaseException) -> None:
    """Clear the locals of the frames a failed call left in its traceback, so the producer
    whose call failed is not kept alive by the exception (which a frame of its own traceback
    refers back to, a cycle only the garbage collector would break)."""
    traceback.clear_frames(exc.__traceback__)


def _bounded(call: Callable[[float], object], deadline: float, what: str) -> None:
    """Run a transactional call with the time left; again while its error is retriable."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise KafkaException(
                KafkaError(KafkaError._TIMED_OUT, f"{what} did not complete in time", fatal=False)
            )
        try:
            call(left)
            return
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.retriable() and not err.fatal():
                log.warning("%s: %s; retrying", what, err)
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            raise


def for_settings(settings: InferenceSettings, consumer: Consumer) -> Delivery:
    return (
        ExactlyOnce(settings, consumer)
        if settings.exactly_once
        else AtLeastOnce(settings, consumer)
    )
