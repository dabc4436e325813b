"""Adapting to a new camera or light: batch-norm statistics re-estimated on post-change inputs,
then a short fine-tune with them frozen. Real networks, real simulated photos, no broker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.services.core.gate import ChampionGate
from driftline.services.simulator.fleet import labelled_dataset
from driftline.services.simulator.images import ImageConditions, labelled_images
from driftline.trainer.bootstrap import as_served
from driftline.trainer.champion import ChampionModel
from driftline.trainer.dataset import LabelledSet
from driftline.trainer.export import export_classifier
from driftline.trainer.fit import FitConfig, adapt_normalisation, fit, predict
from driftline.trainer.inputs import model_input
from driftline.trainer.models import ImageCNN, SensorCNN
from driftline.trainer.retrain import RetrainConfig, train_challenger

N = len(INSULATOR_CLASSES)
DARK = ImageConditions(brightness=0.65, haze=0.25)


TRAINING_WORLD = ImageConditions()


def photos(n: int, seed: int, world: ImageConditions = TRAINING_WORLD) -> Any:
    x, y = labelled_images(n, seed, world)
    return as_served(x), y


@pytest.fixture(scope="module")
def baseline_state() -> dict[str, torch.Tensor]:
    """An image CNN trained on the training world (once for this module)."""
    x, y = photos(1600, 3)
    xf = model_input("image", x)
    torch.manual_seed(3)
    model = ImageCNN(N, width=8)
    model.fit_normalisation(torch.from_numpy(xf))
    fit(model, xf, y, xf[:8], y[:8], N, FitConfig(epochs=5, learning_rate=1e-2, seed=3))
    return {k: v.clone() for k, v in model.state_dict().items()}


def baseline_model(state: dict[str, torch.Tensor]) -> ImageCNN:
    model = ImageCNN(N, width=8)
    model.load_state_dict(state)
    return model.eval()


def accuracy(model: torch.nn.Module, x: Any, y: Any) -> float:
    pred = predict(model, model_input("image", x), torch.device("cpu")).argmax(axis=1)
    return float((pred == y).mean())


def test_statistics_come_from_the_inputs_alone_and_a_network_without_batch_norm_is_untouched() -> (
    None
):
    model = ImageCNN(N, width=4)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = model_input("image", photos(64, 1, DARK)[0])
    assert adapt_normalisation(model, x, "cpu") == 4  # one per conv block
    first = bn.running_mean.clone()
    assert not torch.allclose(first, torch.zeros_like(first))
    assert bn.momentum == 0.1  # restored after the exact average
    torch.manual_seed(0)
    adapt_normalisation(model, x, "cpu")
    torch.manual_seed(0)
    adapt_normalisation(model, x, "cpu")
    again = bn.running_mean.clone()
    torch.manual_seed(0)
    adapt_normalisation(model, x, "cpu")
    assert torch.allclose(again, bn.running_mean)  # an average over x, not a moving one

    sensor = SensorCNN(4, N)
    before = {k: v.clone() for k, v in sensor.state_dict().items()}
    windows, _ = labelled_dataset(32, 1)
    assert adapt_normalisation(sensor, windows, "cpu") == 0
    assert all(torch.equal(before[k], v) for k, v in sensor.state_dict().items())


def test_a_darker_camera_is_largely_recovered_from_unlabelled_inputs(
    baseline_state: dict[str, torch.Tensor],
) -> None:
    model = baseline_model(baseline_state)
    x_new, y_new = photos(600, 5, DARK)
    before = accuracy(model, x_new[200:], y_new[200:])
    adapt_normalisation(model, model_input("image", x_new[:200]), "cpu")
    after = accuracy(model, x_new[200:], y_new[200:])
    print(f"darker camera: {before:.3f} before, {after:.3f} after adapting the statistics")
    assert after > before + 0.1


def test_a_post_change_retrain_adapts_the_statistics_then_fine_tunes_with_them_frozen(
    baseline_state: dict[str, torch.Tensor],
) -> None:
    champion_net = baseline_model(baseline_state)
    x_old, y_old = photos(400, 7)
    x_new, y_new = photos(300, 8, DARK)
    x = np.concatenate([x_old, x_new])
    y = np.concatenate([y_old, y_new])
    change_ms = len(x_old)
    data = LabelledSet.from_arrays(x, y)
    xf = model_input("image", x[:64])
    champion = ChampionModel(
        SimpleNamespace(version=1),  # type: ignore[arg-type]
        export_classifier(champion_net, xf, "image").onnx_bytes,
        champion_net.state_dict(),
    )
    seen: list[FitConfig] = []

    def recording_fit(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[6])
        return fit(*args, **kwargs)

    config = RetrainConfig(
        fit=FitConfig(epochs=6, learning_rate=1e-2, seed=3),
        gate=ChampionGate(margin=0.01),
        image_width=8,
        min_adapt_examples=400,
        adapt_fit=FitConfig(epochs=2, learning_rate=1e-3, seed=3),
    )
    challenger = train_challenger(
        "image", data, champion, config, fit_fn=recording_fit, change_point_ms=change_ms
    )
    assert challenger.warm_started
    assert challenger.metrics["norm_layers_adapted"] == 4
    assert seen[0].freeze_norm
    assert seen[0].epochs == 2
    assert seen[0].learning_rate == 1e-3
    m = challenger.metrics
    print(
        f"post-change holdout: challenger {m['holdout_accuracy']:.3f}, "
        f"champion {m['champion_holdout_accuracy']:.3f}"
    )
    assert m["holdout_accuracy"] > m["champion_holdout_accuracy"] + 0.1
    assert challenger.decision.promote

    # Without a change point it is an ordinary retrain: nothing adapted, the usual fit.
    seen.clear()
    plain = train_challenger("image", data, champion, config, fit_fn=recording_fit)
    assert plain.metrics["norm_layers_adapted"] == 0
    assert not seen[0].freeze_norm
    assert seen[0].epochs == 6


def test_statistics_are_taken_over_a_class_balanced_view_of_the_new_world() -> None:
    from driftline.trainer.retrain import _class_balanced

    rows = np.arange(10, 20, dtype=np.intp)
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 3, 0], dtype=np.int64)  # mostly healthy
    picked = _class_balanced(rows, y)
    by_class = {c: int(np.isin(picked, rows[y == c]).sum()) for c in (0, 1, 3)}
    assert by_class == {0: 7, 1: 7, 3: 7}
    assert set(picked.tolist()) == set(rows.tolist()), "every example is used"
    assert _class_balanced(rows[:0], y[:0]).size == 0
