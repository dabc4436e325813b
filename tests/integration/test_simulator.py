"""The simulator publishes windows, photos and delayed labels that agree with what it sent."""

from __future__ import annotations

import pytest

from driftline.schemas import codec
from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.schemas.messages import CameraImage, Label, SensorWindow
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.simulator import sensors
from driftline.services.simulator.settings import SimulatorSettings
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_fleet_stream_with_labels_and_a_drift(kafka: KafkaSettings) -> None:
    report = sensors.run(
        SimulatorSettings(
            kafka=kafka,
            rate=400,
            image_rate=40,
            count=440,
            label_fraction=0.5,
            label_delay_min_s=0.2,
            label_delay_max_s=0.8,
            scenario="aging",
            drift_at_s=0.5,
            seed=3,
            inspection_fraction=0.3,
            inspection_lookback_s=20.0,
        ),
        progress=False,
        keep_truth=True,
    )
    assert report.sent == 440
    assert 20 <= report.images <= 60
    assert [name for _, name in report.phases] == ["baseline", "humid season, aged insulators"]
    windows = drain(kafka, kafka.topics.sensor_windows, expect=report.sent - report.images)
    photos = drain(kafka, kafka.topics.camera_images, expect=report.images)
    labels = drain(kafka, kafka.topics.feedback_labels, expect=report.labels)
    assert len(windows) + len(photos) == 440
    assert all(codec.decode(SensorWindow, m.value()).array().shape == (4, 64) for m in windows[:5])
    photo = codec.decode(CameraImage, photos[0].value())
    assert photo.content_type == "image/jpeg"
    assert photo.image is not None
    assert photo.image[:2] == b"\xff\xd8"
    truth = {t.event_id: t for t in report.truth}
    assert 150 < report.labels < 290, "about half of the events are labelled"
    inspections = 0
    for m in labels:
        label = codec.decode(Label, m.value())
        assert label.asset_id is not None
        assert m.key() == label.asset_id.encode(), "labels are keyed by asset, as the join is"
        assert label.true_class in INSULATOR_CLASSES
        assert label.source == "simulator"
        if label.event_id is None:  # an inspection of the asset, holding for a while back
            inspections += 1
            assert label.inspection_time_ms is not None
            assert label.lookback_ms == 20_000
            continue
        assert label.asset_id == truth[label.event_id].asset_id
        assert label.true_class == truth[label.event_id].true_class
    assert 0.15 * len(labels) < inspections < 0.45 * len(labels), "about 30% are inspections"
