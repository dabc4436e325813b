"""The image CNN: jitter only while training, an exact export, a width warm starts read back,
and a bootstrap that trains on photos as they are served."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driftline.schemas.contracts import IMAGE_INPUT_NAME, IMAGE_SIZE, INSULATOR_CLASSES
from driftline.services.simulator import images
from driftline.services.simulator.images import encode_jpeg, labelled_images
from driftline.trainer.bootstrap import as_served, bootstrap_epochs
from driftline.trainer.champion import ChampionModel
from driftline.trainer.export import export_classifier
from driftline.trainer.fit import FitConfig, fit
from driftline.trainer.inputs import decode_image, model_input
from driftline.trainer.models import ImageCNN, image_width_of, jitter_photos
from driftline.trainer.retrain import _warm_start, new_model
from driftline.trainer.settings import TrainerSettings


def photos(n: int = 8, seed: int = 3) -> torch.Tensor:
    x, _ = labelled_images(n, seed)
    return torch.from_numpy(model_input("image", np.ascontiguousarray(x.transpose(0, 3, 1, 2))))


def test_jitter_without_shift_mirrors_some_photos_and_leaves_the_rest() -> None:
    torch.manual_seed(0)
    x = photos(16)
    out = jitter_photos(x, shift=0)
    same = [bool(torch.equal(o, i)) for o, i in zip(out, x, strict=True)]
    mirrored = [bool(torch.equal(o, i.flip(2))) for o, i in zip(out, x, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert any(mirrored)
    assert any(same)


def test_jitter_moves_pixels_without_inventing_values() -> None:
    torch.manual_seed(1)
    x = photos(4)
    out = jitter_photos(x, shift=4)
    assert out.shape == x.shape
    for o, i in zip(out, x, strict=True):
        assert set(o.flatten().tolist()) <= set(i.flatten().tolist())
    assert not torch.equal(out, x)


def test_the_served_graph_neither_jitters_nor_drifts_from_torch() -> None:
    torch.manual_seed(2)
    model = ImageCNN(len(INSULATOR_CLASSES), width=4)
    x = photos(8)
    model.fit_normalisation(x)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    exported = export_classifier(model, x.numpy(), IMAGE_INPUT_NAME)
    assert exported.parity_max_abs_diff <= 1e-4
    assert exported.inputs[0].shape[1:] == [3, IMAGE_SIZE, IMAGE_SIZE]


def test_a_champion_state_rebuilds_the_same_network_for_a_warm_start() -> None:
    state = ImageCNN(len(INSULATOR_CLASSES), width=6).state_dict()
    assert image_width_of(state) == 6
    new_model("image", image_width_of(state)).load_state_dict(state, strict=True)


def test_the_image_bootstrap_trains_longer_than_a_retrain() -> None:
    settings = TrainerSettings(epochs=3, bootstrap_image_epochs=11)
    assert bootstrap_epochs(settings, "image") == 11
    assert bootstrap_epochs(settings, "sensor") == 3


def test_the_bootstrap_trains_on_photos_as_the_cameras_send_and_inference_decodes_them() -> None:
    raw, _ = labelled_images(6, 5)
    served = as_served(raw)
    assert served.shape == (6, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert served.dtype == np.uint8
    for photo, mine in zip(raw, served, strict=True):
        assert np.array_equal(mine, decode_image(encode_jpeg(photo)))
    # JPEG is lossy: the training photos are not the raw renders.
    assert not np.array_equal(served, raw.transpose(0, 3, 1, 2))


def test_weights_of_an_earlier_image_network_cold_start_instead_of_failing() -> None:
    # The first image CNN had a full-resolution first layer (3 input channels) and paired
    # blocks; a champion saved by it must not stop a retrain, only its warm start.
    old = {
        "mean": torch.zeros(1, 3, 1, 1),
        "std": torch.ones(1, 3, 1, 1),
        "features.0.weight": torch.zeros(16, 3, 3, 3),
        "head.weight": torch.zeros(len(INSULATOR_CLASSES), 256),
    }
    champion = ChampionModel(version=None, onnx_bytes=b"", weights=old)  # type: ignore[arg-type]
    check = photos(2).numpy()
    assert _warm_start("image", champion, check, image_width=16) is None


def test_training_leaves_the_network_in_the_default_layout() -> None:
    # fit trains photos channels-last; what is saved (safetensors wants contiguous tensors)
    # and exported must not depend on that.
    x = photos(16).numpy()
    y = np.arange(16, dtype=np.int64) % len(INSULATOR_CLASSES)
    model = ImageCNN(len(INSULATOR_CLASSES), width=4)
    fit(model, x, y, x[:4], y[:4], len(INSULATOR_CLASSES), FitConfig(epochs=1, batch_size=8))
    for name, tensor in model.state_dict().items():
        assert tensor.is_contiguous(), name
    assert export_classifier(model, x[:4], IMAGE_INPUT_NAME).parity_max_abs_diff <= 1e-4


def test_a_large_photo_set_is_the_same_however_many_threads_render_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, classes = labelled_images(600, 11)  # three chunks, rendered on every core
    monkeypatch.setattr(images.os, "cpu_count", lambda: 1)
    one_thread, again = labelled_images(600, 11)
    assert np.array_equal(first, one_thread)
    assert np.array_equal(classes, again)
