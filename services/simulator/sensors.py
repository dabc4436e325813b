"""`driftline simulate sensors`: publish SensorWindow events for a fleet at a paced rate."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from schemas import headers as h
from schemas.avro import encode_record
from schemas.contracts import (
    INSULATOR_CLASSES,
    SENSOR_CHANNELS,
    SENSOR_SAMPLE_RATE_HZ,
    SENSOR_SAMPLES,
)
from services.runtime.kafka import DeliveryTracker, flush_or_raise, producer
from services.runtime.settings import SimulatorSettings
from services.simulator.fleet import draw_classes, generate_windows

TICK_S = 0.02


@dataclass(frozen=True)
class SentWindow:
    """What the simulator knows about an event it sent (its true class, for labels and tests)."""

    event_id: str
    asset_id: str
    true_class: str


@dataclass
class SimulationReport:
    sent: int
    seconds: float
    truth: list[SentWindow]


def _asset_ids(n: int) -> list[str]:
    return [f"insulator-{i:05d}" for i in range(n)]


def run(
    settings: SimulatorSettings,
    *,
    stop: Callable[[], bool] = lambda: False,
    progress: bool = True,
    keep_truth: bool = False,
) -> SimulationReport:
    """Publish windows at settings.rate until settings.count are sent or stop() says so."""
    rng = np.random.default_rng(settings.seed)
    assets = _asset_ids(settings.assets)
    conditions = draw_classes(rng, settings.assets, settings.fault_fraction)
    topic = settings.kafka.topics.sensor_windows
    prod = producer(settings.kafka)
    tracker = DeliveryTracker()
    run_id = uuid.uuid4().hex[:12]
    headers: h.HeaderList = [(h.CONTENT_TYPE, h.CONTENT_TYPE_AVRO.encode())]
    channels = list(SENSOR_CHANNELS)
    truth: list[SentWindow] = []
    sent = 0
    start = time.monotonic()
    last_report = start
    target = settings.count
    while (target is None or sent < target) and not stop():
        now = time.monotonic()
        due = int((now - start) * settings.rate) + 1 - sent
        if target is not None:
            due = min(due, target - sent)
        if due <= 0:
            time.sleep(min(TICK_S, (sent + 1) / settings.rate - (now - start)))
            continue
        picks = rng.integers(0, len(assets), due)
        windows = generate_windows(rng, conditions[picks])
        now_ms = int(time.time() * 1000)
        for i, asset_index in enumerate(picks.tolist()):
            event_id = f"{run_id}-{sent + i}"
            record = {
                "schema_version": 1,
                "event_id": event_id,
                "asset_id": assets[asset_index],
                "sensor_id": f"{assets[asset_index]}-s0",
                "event_time_ms": now_ms,
                "sample_rate_hz": SENSOR_SAMPLE_RATE_HZ,
                "channels": channels,
                "n_samples": SENSOR_SAMPLES,
                "samples": windows[i].tobytes(),
            }
            prod.produce(
                topic,
                key=assets[asset_index],
                value=encode_record("SensorWindow", record),
                headers=headers,
                on_delivery=tracker,
            )
            if keep_truth:
                truth.append(
                    SentWindow(
                        event_id,
                        assets[asset_index],
                        INSULATOR_CLASSES[int(conditions[asset_index])],
                    )
                )
        sent += due
        prod.poll(0)
        if progress and now - last_report >= 1.0:
            last_report = now
            rate = sent / max(now - start, 1e-9)
            sys.stderr.write(f"\rsimulate: {sent} windows sent ({rate:,.0f}/s)   ")
            sys.stderr.flush()
    flush_or_raise(prod, tracker)
    elapsed = time.monotonic() - start
    if progress:
        sys.stderr.write(f"\rsimulate: {sent} windows sent in {elapsed:.1f}s to {topic}\n")
    return SimulationReport(sent=sent, seconds=elapsed, truth=truth)
