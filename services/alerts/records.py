"""The alert rule's types to and from the contracts, and the delivery report of an alert."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import KafkaError, Message

from driftline.schemas.messages import Alert, InferenceResult
from driftline.services.core.alerting import Observation, RaisedAlert
from driftline.services.runtime.kafka import DeliveryTracker


def to_alert(raised: RaisedAlert) -> Alert:
    """The Alert record of a raised alert (the contract has no modality)."""
    return Alert(
        alert_id=raised.alert_id,
        asset_id=raised.asset_id,
        severity=raised.severity,
        reason=raised.reason,
        predicted_class=raised.predicted_class,
        evidence_event_ids=list(raised.evidence_event_ids),
        model_name=raised.model_name,
        model_version=raised.model_version,
        raised_time_ms=raised.raised_time_ms,
    )


def observation(result: InferenceResult) -> Observation:
    """What the rule needs of a result."""
    return Observation(
        event_id=result.event_id,
        asset_id=result.asset_id,
        predicted_class=result.predicted_class,
        confidence=result.confidence,
        event_time_ms=result.event_time_ms,
        model_name=result.model_name,
        model_version=result.model_version,
        modality=result.modality,
    )


def placed(
    tracker: DeliveryTracker, positions: dict[str, tuple[int, int]], alert_id: str
) -> Callable[[KafkaError | None, Message], None]:
    """A delivery report that also notes where the alert landed (for its dead letter)."""

    def report(err: KafkaError | None, msg: Message) -> None:
        tracker(err, msg)
        if err is None:
            partition, offset = msg.partition(), msg.offset()
            if partition is not None and offset is not None:
                positions[alert_id] = (partition, offset)

    return report
