"""`driftline simulate`: a fleet's sensor windows, camera photos and delayed field labels.

Events are sent at constant rates with accurate pacing (every millisecond, whatever is due),
so latency can be measured against a known load. The world follows a drift scenario (see
scenario.py); the fleet's conditions may evolve; a share of events is labelled after a
random delay, as field inspections would, on feedback.labels keyed by asset id: a share of
them (`inspection_fraction`) as asset inspections (the asset's condition at that event, holding
for the `inspection_lookback_s` before it), the rest as per-event labels.
"""

from __future__ import annotations

import heapq
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import numpy as np

from driftline.schemas import codec
from driftline.schemas import headers as h
from driftline.schemas.avro import encode_record
from driftline.schemas.contracts import (
    INSULATOR_CLASSES,
    SENSOR_CHANNELS,
    SENSOR_SAMPLE_RATE_HZ,
    SENSOR_SAMPLES,
)
from driftline.schemas.messages import CameraImage, Label
from driftline.services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from driftline.services.simulator import scenario as scenarios
from driftline.services.simulator.fleet import Fleet, generate_windows
from driftline.services.simulator.images import encode_jpeg, encode_png, generate_images
from driftline.services.simulator.settings import SimulatorSettings

TICK_S = 0.001


@dataclass(frozen=True)
class SentWindow:
    """What the simulator knows about an event it sent (its true class, for labels and tests)."""

    event_id: str
    asset_id: str
    true_class: str
    modality: str = "sensor"
    t_s: float = 0.0  # seconds since the simulation started


@dataclass
class SimulationReport:
    sent: int
    seconds: float
    truth: list[SentWindow]
    images: int = 0
    labels: int = 0
    phases: list[tuple[float, str]] = field(default_factory=list)


@dataclass(order=True)
class _PendingLabel:
    due: float
    label: Label = field(compare=False)


class _Stream:
    """The state of one simulation run."""

    def __init__(
        self,
        settings: SimulatorSettings,
        keep_truth: bool,
        on_sent: Callable[[SentWindow], None] | None = None,
    ) -> None:
        self.s = settings
        self.rng = np.random.default_rng(settings.seed)
        self.fleet = Fleet(self.rng, settings.assets, settings.fault_fraction)
        scenario = scenarios.load(settings.scenario)
        if settings.drift_at_s is not None:
            scenario = scenarios.shifted(scenario, settings.drift_at_s)
        self.scenario = scenario
        topics = settings.kafka.topics
        self.sensor_topic, self.image_topic = topics.sensor_windows, topics.camera_images
        self.label_topic = topics.feedback_labels
        self.prod = producer(settings.kafka)
        self.tracker = DeliveryTracker()
        self.run_id = uuid.uuid4().hex[:12]
        self.keep_truth = keep_truth
        self.on_sent = on_sent
        self.truth: list[SentWindow] = []
        self.labels: list[_PendingLabel] = []
        self.windows = self.images = self.labelled = 0
        self.phases: list[tuple[float, str]] = []
        self.encode_image = encode_jpeg if settings.image_format == "jpeg" else encode_png
        self.image_ctype = "image/jpeg" if settings.image_format == "jpeg" else "image/png"

    def _after_send(
        self, event_id: str, asset: int, t: float, modality: str, event_time_ms: int
    ) -> None:
        true_class = INSULATOR_CLASSES[int(self.fleet.conditions[asset])]
        if self.keep_truth or self.on_sent is not None:
            sent = SentWindow(event_id, self.fleet.ids[asset], true_class, modality, t)
            if self.keep_truth:
                self.truth.append(sent)
            if self.on_sent is not None:
                self.on_sent(sent)
        s = self.s
        if s.label_fraction and self.rng.random() < s.label_fraction:
            delay = self.rng.uniform(
                s.label_delay_min_s, max(s.label_delay_min_s, s.label_delay_max_s)
            )
            inspection = bool(s.inspection_fraction) and self.rng.random() < s.inspection_fraction
            label = Label(
                event_id=None if inspection else event_id,
                true_class=true_class,
                source="simulator",
                label_time_ms=0,
                asset_id=self.fleet.ids[asset],
                inspection_time_ms=event_time_ms if inspection else None,
                lookback_ms=int(s.inspection_lookback_s * 1000) if inspection else None,
            )
            heapq.heappush(self.labels, _PendingLabel(t + delay, label))

    def send_windows(self, n: int, t: float) -> None:
        picks = self.rng.integers(0, len(self.fleet.ids), n)
        world = self.scenario.phase_at(t).sensor
        windows = generate_windows(self.rng, self.fleet.conditions[picks], world)
        now_ms = int(time.time() * 1000)
        channels = list(SENSOR_CHANNELS)
        for i, asset in enumerate(picks.tolist()):
            event_id = f"{self.run_id}-{self.windows + i}"
            asset_id = self.fleet.ids[asset]
            record = {
                "schema_version": 1,
                "event_id": event_id,
                "asset_id": asset_id,
                "sensor_id": f"{asset_id}-s0",
                "event_time_ms": now_ms,
                "sample_rate_hz": SENSOR_SAMPLE_RATE_HZ,
                "channels": channels,
                "n_samples": SENSOR_SAMPLES,
                "samples": windows[i].tobytes(),
            }
            self.prod.produce(
                self.sensor_topic,
                key=asset_id,
                value=encode_record("SensorWindow", record),
                headers=h.AVRO,
                on_delivery=self.tracker,
            )
            self._after_send(event_id, asset, t, "sensor", now_ms)
        self.windows += n

    def send_images(self, n: int, t: float) -> None:
        picks = self.rng.integers(0, len(self.fleet.ids), n)
        world = self.scenario.phase_at(t).image
        photos = generate_images(self.rng, self.fleet.conditions[picks], world)
        now_ms = int(time.time() * 1000)
        for i, asset in enumerate(picks.tolist()):
            event_id = f"{self.run_id}-img{self.images + i}"
            msg = CameraImage(
                event_id=event_id,
                asset_id=self.fleet.ids[asset],
                camera_id=f"{self.fleet.ids[asset]}-cam",
                event_time_ms=now_ms,
                content_type=self.image_ctype,
                image=self.encode_image(photos[i]),
            )
            self.prod.produce(
                self.image_topic,
                key=msg.asset_id,
                value=codec.encode(msg),
                headers=h.AVRO,
                on_delivery=self.tracker,
            )
            self._after_send(event_id, asset, t, "image", now_ms)
        self.images += n

    def send_due_labels(self, t: float) -> None:
        now_ms = int(time.time() * 1000)
        while self.labels and self.labels[0].due <= t:
            pending = heapq.heappop(self.labels)
            label = msgspec.structs.replace(pending.label, label_time_ms=now_ms)
            self.prod.produce(
                self.label_topic,
                key=label.asset_id,
                value=codec.encode(label),
                headers=h.AVRO,
                on_delivery=self.tracker,
            )
            self.labelled += 1

    def note_phase(self, t: float) -> None:
        phase = self.scenario.phase_at(t)
        if not self.phases or self.phases[-1][1] != phase.name:
            self.phases.append((t, phase.name))


def run(
    settings: SimulatorSettings,
    *,
    stop: Callable[[], bool] = lambda: False,
    progress: bool = True,
    keep_truth: bool = False,
    on_sent: Callable[[SentWindow], None] | None = None,
) -> SimulationReport:
    """Send events at the configured rates until `count` are sent (then the labels still due)
    or stop() says so."""
    st = _Stream(settings, keep_truth, on_sent)
    target = settings.count
    start = time.monotonic()
    last_report = last_evolve = start
    total_rate = settings.rate + settings.image_rate
    if total_rate <= 0:
        raise ValueError("nothing to simulate: rate and image_rate are both 0")
    while not stop():
        now = time.monotonic()
        t = now - start
        st.note_phase(t)
        if settings.evolve_per_s:
            st.fleet.evolve((now - last_evolve) * settings.evolve_per_s)
            last_evolve = now
        sent = st.windows + st.images
        done = target is not None and sent >= target
        if done and not st.labels:
            break
        if not done:
            room = None if target is None else target - sent
            due_w = int(t * settings.rate) + 1 - st.windows if settings.rate else 0
            due_i = int(t * settings.image_rate) + 1 - st.images if settings.image_rate else 0
            if room is not None:
                due_w = min(due_w, room)
                due_i = min(due_i, room - max(due_w, 0))
            if due_w > 0:
                st.send_windows(due_w, t)
            if due_i > 0:
                st.send_images(due_i, t)
        st.send_due_labels(t)
        st.prod.poll(0)
        if progress and now - last_report >= 1.0:
            last_report = now
            phase = st.scenario.phase_at(t).name
            sys.stderr.write(
                f"\rsimulate: {st.windows} windows, {st.images} photos, {st.labelled} labels "
                f"({(st.windows + st.images) / max(t, 1e-9):,.0f}/s)  [{phase}]   "
            )
            sys.stderr.flush()
        time.sleep(TICK_S)
    flush_or_raise(st.prod, st.tracker)
    elapsed = time.monotonic() - start
    if progress:
        sys.stderr.write(
            f"\rsimulate: {st.windows} windows, {st.images} photos and {st.labelled} labels "
            f"sent in {elapsed:.1f}s\n"
        )
    return SimulationReport(
        sent=st.windows + st.images,
        seconds=elapsed,
        truth=st.truth,
        images=st.images,
        labels=st.labelled,
        phases=st.phases,
    )
