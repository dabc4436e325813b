"""The simulator publishes windows, photos and delayed labels that agree with what it sent."""

from __future__ import annotations

import pytest

from schemas import codec
from schemas.contracts import INSULATOR_CLASSES
from schemas.messages import CameraImage, Label, SensorWindow
from services.runtime.settings import KafkaSettings, SimulatorSettings
from services.simulator import sensors
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
    for m in labels:
        label = codec.decode(Label, m.value())
        assert m.key() == label.event_id.encode()
        assert label.true_class == truth[label.event_id].true_class
        assert label.true_class in INSULATOR_CLASSES
        assert label.source == "simulator"
