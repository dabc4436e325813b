"""A producer librdkafka declared fatal is replaced, so a service's later batches can succeed."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from driftline.services.runtime.kafka import DeliveryTracker, RenewableProducer
from driftline.services.runtime.settings import KafkaSettings


class DeadOnArrival:
    """Stands in for confluent-kafka's Producer: the first one built goes fatal on produce,
    as an idempotent producer does once its epoch is fenced; later ones work."""

    built = 0

    def __init__(self, error_cb: Any) -> None:
        DeadOnArrival.built += 1
        self.number = DeadOnArrival.built
        self.error_cb = error_cb
        self.purged = False
        self.sent: list[bytes] = []

    def produce(self, _topic: str, value: bytes) -> None:
        if self.number == 1:
            err = KafkaError(KafkaError._FATAL, "producer fenced", fatal=True)
            self.error_cb(err)
            raise KafkaException(err)
        self.sent.append(value)

    def poll(self, _timeout: float) -> int:
        return 0

    def purge(self, *, in_queue: bool, in_flight: bool) -> None:
        self.purged = in_queue and in_flight


def factory(_kafka: KafkaSettings, *, error_cb: Any) -> DeadOnArrival:
    return DeadOnArrival(error_cb)


def test_a_fatal_producer_is_purged_and_replaced_and_the_retry_goes_through() -> None:
    DeadOnArrival.built = 0
    holder = RenewableProducer(KafkaSettings(), factory=factory)  # type: ignore[arg-type]
    first = holder.producer
    with pytest.raises(KafkaException) as failed:
        first.produce("t", b"batch")
    assert holder.renew_if_fatal(failed.value)
    assert first.purged
    assert holder.producer is not first
    assert holder.renewals == 1
    holder.producer.produce("t", b"batch")  # the replayed batch
    assert holder.producer.sent == [b"batch"]
    assert not holder.renew_if_fatal()  # a healthy producer is kept


def test_an_ordinary_failure_keeps_the_producer() -> None:
    holder = RenewableProducer(KafkaSettings(), factory=factory)  # type: ignore[arg-type]
    kept = holder.producer
    timeout = KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "broker away"))
    assert not holder.renew_if_fatal(timeout)
    assert holder.producer is kept


def test_a_fatal_delivery_report_marks_the_producer() -> None:
    tracker = DeliveryTracker()
    tracker(KafkaError(KafkaError._FATAL, "out of order sequence", fatal=True), None)
    holder = RenewableProducer(KafkaSettings(), factory=factory)  # type: ignore[arg-type]
    kept = holder.producer
    holder.note(tracker.fatal)
    assert holder.renew_if_fatal()
    assert holder.producer is not kept
    tracker.reset()
    assert tracker.fatal is None


class FlakyFleet:
    """Producers for `send_all`: the first `fatal` built go fatal on flush (their error_cb
    names why, as librdkafka's does); later ones deliver every record."""

    def __init__(self, fatal: int) -> None:
        self.fatal = fatal
        self.built: list[FlakyFleet.One] = []

    class One:
        def __init__(self, fatal: bool, error_cb: Any) -> None:
            self.fatal, self.error_cb = fatal, error_cb
            self.queued: list[tuple[Any, Any]] = []
            self.delivered: list[bytes] = []

        def produce(
            self, _topic: str, *, key: Any, value: Any, headers: Any, on_delivery: Any
        ) -> None:
            del key, headers
            self.queued.append((value, on_delivery))

        def flush(self, _timeout: float) -> int:
            for value, report in self.queued:
                if self.fatal:
                    err = KafkaError(KafkaError._FATAL, "producer id refused", fatal=True)
                    self.error_cb(err)
                    report(err, None)
                else:
                    self.delivered.append(value)
                    report(None, None)
            self.queued.clear()
            return 0

        def poll(self, _timeout: float) -> int:
            return 0

    def __call__(self, _kafka: KafkaSettings, *, error_cb: Any) -> FlakyFleet.One:
        one = FlakyFleet.One(len(self.built) < self.fatal, error_cb)
        self.built.append(one)
        return one


def test_send_all_replaces_a_fatal_producer_and_delivers_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from driftline.services.runtime import kafka

    fleet = FlakyFleet(fatal=2)
    monkeypatch.setattr(kafka, "producer", fleet)
    records: list[kafka.Record] = [(b"k1", b"letter-1", []), (b"k2", None, [])]
    kafka.send_all(KafkaSettings(), "t.dlq", records, backoff_s=0.0)
    assert len(fleet.built) == 3
    assert fleet.built[-1].delivered == [b"letter-1", None]


def test_send_all_names_the_cause_when_every_producer_goes_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from driftline.services.runtime import kafka

    monkeypatch.setattr(kafka, "producer", FlakyFleet(fatal=9))
    with pytest.raises(kafka.FatalProducerError, match="producer id refused"):
        kafka.send_all(KafkaSettings(), "t.dlq", [(None, b"x", [])], attempts=2, backoff_s=0.0)
