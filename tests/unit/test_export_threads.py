"""Two models exported at once, as the trainer's per-model worker threads do, both succeed."""

from __future__ import annotations

import threading

import numpy as np
import torch

from schemas.contracts import IMAGE_INPUT_NAME, SENSOR_CHANNELS, SENSOR_INPUT_NAME
from trainer.export import export_classifier
from trainer.models import ImageCNN, SensorCNN


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
