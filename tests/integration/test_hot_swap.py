"""Hot swap under load: new versions serve without a stop, bad ones are refused, none lost."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from driftline.schemas import codec
from driftline.schemas.messages import STATUS_CHAMPION, InferenceResult, ModelVersion
from driftline.services.inference import service
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime import registry
from driftline.services.runtime.settings import KafkaSettings
from driftline.services.runtime.shutdown import StopFlag
from driftline.services.runtime.signing import generate_keypair, sign
from driftline.services.simulator import sensors
from driftline.services.simulator.settings import SimulatorSettings
from tests.integration.kafka_io import drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def republish(kafka: KafkaSettings, mv: ModelVersion, **changes: object) -> ModelVersion:
    new = msgspec.structs.replace(mv, **changes)
    registry.publish(kafka, kafka.topics.models_registry, new)
    return new


class Serving:
    """The inference service in a thread, with its metrics registry."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.metrics = CollectorRegistry()
        self.stop = StopFlag()
        self.versions: list[int] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.settings = settings
        self.thread.start()

    def _run(self) -> None:
        try:
            service.run(
                self.settings,
                self.stop,
                lambda s: self.versions.append(s.model_version),
                self.metrics,
            )
        except BaseException as exc:
            self.errors.append(exc)

    def swaps(self, outcome: str, reason: str = "") -> float:
        value = self.metrics.get_sample_value(
            "driftline_model_swaps_total",
            {"model": "insulator-sensor", "outcome": outcome, "reason": reason},
        )
        return value or 0.0

    def wait_for(self, condition: object, timeout_s: float = 30.0) -> None:
        assert callable(condition)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"condition not met in {timeout_s}s; errors: {self.errors}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.errors, self.errors


@pytest.fixture
def serving(
    kafka: KafkaSettings,
    sensor_champion: ModelVersion,  # noqa: ARG001  (published first; marks cannot apply to fixtures)
) -> Iterator[Serving]:
    s = Serving(InferenceSettings(kafka=kafka, max_batch=64, max_wait_ms=10))
    yield s
    s.close()


def test_swap_under_load_loses_and_repeats_nothing(
    kafka: KafkaSettings, sensor_champion: ModelVersion, serving: Serving
) -> None:
    stop_sim = threading.Event()
    reports: list[sensors.SimulationReport] = []
    sim = threading.Thread(
        target=lambda: reports.append(
            sensors.run(
                SimulatorSettings(kafka=kafka, rate=800, count=4000, seed=9),
                stop=stop_sim.is_set,
                progress=False,
                keep_truth=True,
            )
        )
    )
    sim.start()
    serving.wait_for(lambda: len(serving.versions) > 5)
    published_at = time.monotonic()
    republish(kafka, sensor_champion, version=2)
    serving.wait_for(lambda: serving.versions and serving.versions[-1] == 2)
    swap_s = time.monotonic() - published_at
    sim.join(timeout=60)
    sent = reports[0].truth
    records = drain(kafka, kafka.topics.inference_results, expect=len(sent))
    results = [codec.decode(InferenceResult, m.value()) for m in records]
    ids = Counter(r.event_id for r in results)
    assert set(ids) == {t.event_id for t in sent}
    assert max(ids.values()) == 1
    versions = [r.model_version for r in results]
    assert set(versions) == {1, 2}, "both versions scored part of the stream"
    assert serving.swaps("ok") == 2  # the first load, then the swap
    assert swap_s < 10, f"the new version took {swap_s:.1f}s to serve"


def test_a_tampered_version_is_refused_and_the_old_one_keeps_serving(
    kafka: KafkaSettings, sensor_champion: ModelVersion, serving: Serving, tmp_path: Path
) -> None:
    serving.wait_for(lambda: serving.swaps("ok") == 1)
    bad_file = tmp_path / "tampered.onnx"
    original = Path(sensor_champion.artifact_uri.removeprefix("file://")).read_bytes()
    bad_file.write_bytes(original[:-10] + b"0123456789")
    republish(kafka, sensor_champion, version=2, artifact_uri=bad_file.as_uri())
    serving.wait_for(lambda: serving.swaps("rejected", "sha256") == 1)
    republish(kafka, sensor_champion, version=3, artifact_uri=(tmp_path / "missing.onnx").as_uri())
    serving.wait_for(lambda: serving.swaps("rejected", "fetch") == 1)
    sensors.run(SimulatorSettings(kafka=kafka, count=200, rate=5000), progress=False)
    records = drain(kafka, kafka.topics.inference_results, expect=200)
    assert {codec.decode(InferenceResult, m.value()).model_version for m in records} == {1}


def test_rollback_and_signatures(kafka: KafkaSettings, sensor_champion: ModelVersion) -> None:
    private, public = generate_keypair()
    v2 = msgspec.structs.replace(sensor_champion, version=2)
    signed = republish(kafka, v2, signature=sign(private, v2))
    s = Serving(InferenceSettings(kafka=kafka, public_key=public.decode()))
    try:
        s.wait_for(lambda: s.swaps("ok") == 1)
        v3 = msgspec.structs.replace(sensor_champion, version=3)
        republish(kafka, v3, signature=sign(generate_keypair()[0], v3))
        s.wait_for(lambda: s.swaps("rejected", "signature") == 1)
        republish(kafka, sensor_champion, version=4, signature=None)
        s.wait_for(lambda: s.swaps("rejected", "signature") == 2)
        # Rollback: point the champion at version 1 again (unsigned: refused here too).
        republish(kafka, sensor_champion, status=STATUS_CHAMPION)
        s.wait_for(lambda: s.swaps("rejected", "signature") == 3)
        # ... and at the signed version 2, which serves.
        registry.publish(kafka, kafka.topics.models_registry, signed)
    finally:
        s.close()
    no_key = Serving(InferenceSettings(kafka=kafka, max_wait_ms=5))
    try:
        sim = SimulatorSettings(kafka=kafka, count=50, rate=5000)
        sensors.run(sim, progress=False)
        no_key.wait_for(lambda: bool(no_key.versions))
        assert no_key.versions[-1] == 2, "the last champion record names version 2"
        # Rollback: the champion pointer names version 1 again; every consumer follows.
        republish(kafka, sensor_champion, status=STATUS_CHAMPION)
        no_key.wait_for(lambda: no_key.swaps("ok") == 2)
        sensors.run(sim, progress=False)
        no_key.wait_for(lambda: no_key.versions[-1] == 1)
    finally:
        no_key.close()
