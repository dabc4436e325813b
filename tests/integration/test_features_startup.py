"""The features app starts the same way every time: on a fresh topic prefix (none of its own
topics exist yet), /readyz says ready only once the join is really working, and a label sent
right then yields its labelled window within seconds, not after a metadata refresh minutes later.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from driftline.schemas import codec
from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.schemas.messages import Label, LabelledWindow
from driftline.services.runtime.kafka import admin, create_topics
from driftline.services.runtime.settings import KafkaSettings
from tests.integration.conftest import Endpoints
from tests.integration.test_features import (
    FeaturesProcess,
    base_minute,
    produce_labels,
    produce_results,
    produce_windows,
    result_for,
    sensor_windows,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

STARTS = 5
WINDOW_WITHIN_S = 10.0


def _first_window(kafka: KafkaSettings, event_id: str, timeout_s: float) -> float | None:
    """Seconds until a LabelledWindow for event_id is on training.windows, or None."""
    topic = kafka.topics.training_windows
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"test-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout_s:
            for msg in consumer.consume(100, timeout=0.2):
                if msg.error() is not None:
                    continue
                window = codec.decode(LabelledWindow, msg.value(), None)
                if window.event_id == event_id:
                    return time.monotonic() - started
    finally:
        consumer.close()
    return None


def test_a_label_sent_right_after_readiness_is_joined_within_seconds_every_time(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    delays: list[float] = []
    for attempt in range(STARTS):
        kafka = KafkaSettings(
            bootstrap_servers=endpoints.bootstrap_servers,
            topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        )
        create_topics(kafka)  # the deployment's partition counts, as the demo has them
        # The app's own topics (join topic, changelogs) do not exist: the app creates them.
        own = [
            t
            for t in admin(kafka).list_topics(timeout=10).topics
            if t.startswith(f"{kafka.topic_prefix}driftline-features")
        ]
        assert own == []
        app = FeaturesProcess(
            kafka,
            endpoints.redis_url,
            f"t{uuid.uuid4().hex[:10]}:",
            tmp_path / f"features-{attempt}.log",
            {
                "DRIFTLINE_DATA_DIR": str(tmp_path / f"faust-{attempt}"),
                "DRIFTLINE_JOIN_PARTITIONS": "6",  # the default, not the other tests' 3
            },
        )
        try:
            app.start()  # returns once /readyz answers 200
            (window,) = sensor_windows(1, base_minute(5), seed=100 + attempt)
            produce_windows(kafka, [window])
            produce_results(kafka, [result_for(window, INSULATOR_CLASSES[0], 0.9)])
            label = Label(
                event_id=window.event_id,
                asset_id=window.asset_id,
                true_class=INSULATOR_CLASSES[0],
                source="inspection",
                label_time_ms=window.event_time_ms + 60_000,
            )
            produce_labels(kafka, [label])
            took = _first_window(kafka, window.event_id, WINDOW_WITHIN_S)
            assert took is not None, (
                f"start {attempt + 1}: no labelled window within {WINDOW_WITHIN_S:.0f}s of a "
                f"label sent right after readiness\n{app.log_tail(80)}"
            )
            delays.append(took)
        finally:
            app.stop()
            client = admin(kafka)
            mine = [
                t for t in client.list_topics(timeout=10).topics if t.startswith(kafka.topic_prefix)
            ]
            for future in client.delete_topics(mine, operation_timeout=30).values():
                future.result(timeout=30)
    print(f"\nlabel -> labelled window after readiness: {', '.join(f'{d:.2f}s' for d in delays)}")
