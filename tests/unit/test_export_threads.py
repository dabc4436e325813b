"""Trainings and exports side by side, as the trainer's per-model worker threads run them."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

from driftline.schemas.contracts import IMAGE_INPUT_NAME, SENSOR_CHANNELS, SENSOR_INPUT_NAME
from driftline.services.simulator.fleet import labelled_dataset
from driftline.trainer.export import export_classifier
from driftline.trainer.fit import FitConfig, fit
from driftline.trainer.models import ImageCNN, SensorCNN
from driftline.trainer.tracing import GUARD, TracingGuard


def test_concurrent_exports_of_two_models_both_succeed() -> None:
    torch.manual_seed(0)
    jobs = [
        (SensorCNN(len(SENSOR_CHANNELS), 4), np.zeros((4, 4, 64), np.float32), SENSOR_INPUT_NAME),
        (ImageCNN(4, 4), np.zeros((4, 3, 64, 64), np.float32), IMAGE_INPUT_NAME),
    ] * 2
    errors: list[BaseException] = []
    done: list[int] = []
    start = threading.Barrier(len(jobs))

    def export(i: int) -> None:
        model, example, name = jobs[i]
        start.wait()
        try:
            export_classifier(model.eval(), example, name)
            done.append(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=export, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(done) == list(range(len(jobs)))


def test_training_steps_wait_while_an_export_traces() -> None:
    x, y = labelled_dataset(200, seed=2)
    model = SensorCNN(len(SENSOR_CHANNELS), 4)
    epochs: list[int] = []
    errors: list[BaseException] = []

    def train() -> None:
        try:
            config = FitConfig(epochs=2, batch_size=50)
            fit(model, x, y, x[:50], y[:50], 4, config, lambda rep: epochs.append(rep.epoch))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=train)
    with GUARD.export():  # as an export in another thread would hold it while tracing
        thread.start()
        time.sleep(4.0)  # unguarded, the two epochs take about 1.5 s here
        assert epochs == [], "no training step may run while an export traces"
    thread.join(timeout=60)
    assert not errors, errors
    assert epochs == [1, 2]


def test_the_guard_lets_steps_share_and_an_export_wait_for_them() -> None:
    guard = TracingGuard()
    events: list[str] = []
    in_step = threading.Event()

    def step() -> None:
        with guard.step():
            in_step.set()
            time.sleep(0.2)
            events.append("step done")

    def export() -> None:
        in_step.wait()
        with guard.export():
            events.append("export")

    threads = [threading.Thread(target=step), threading.Thread(target=export)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert events == ["step done", "export"]
    with guard.step(), guard.step():  # steps share the guard
        pass
