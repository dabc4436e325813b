"""Seeded training of a classifier on arrays, with per-epoch progress and a held-out score."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from driftline.services.core.metrics import accuracy, macro_f1
from driftline.trainer.tracing import GUARD


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 3e-3
    seed: int = 7
    device: str = "auto"
    # Keep batch-norm statistics as they are (layers in eval mode while the weights train):
    # after adapt_normalisation has set them from the new world, a few fine-tuning batches
    # that mix in old-world examples must not pull them back.
    freeze_norm: bool = False


NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class EpochReport:
    epoch: int
    loss: float
    train_accuracy: float
    seconds: float
    of: int = 0  # epochs this fit runs (0: not said)


@dataclass
class FitReport:
    epochs: list[EpochReport] = field(default_factory=list)
    holdout_accuracy: float = 0.0
    holdout_macro_f1: float = 0.0
    device: str = "cpu"
    seconds: float = 0.0


def pick_device(wanted: str) -> torch.device:
    """cuda when asked for or when auto and present; cpu otherwise."""
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but torch sees no CUDA device")
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def predict(
    model: nn.Module, x: npt.NDArray[np.float32], device: torch.device, batch: int = 1024
) -> npt.NDArray[np.float32]:
    """Logits for x, in batches, without gradients."""
    model.eval()
    out = []
    with torch.no_grad(), GUARD.step():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[i : i + batch]).to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def adapt_normalisation(
    model: nn.Module, x: npt.NDArray[np.float32], device: str = "auto", batch: int = 256
) -> int:
    """Re-estimate every batch-norm layer's running statistics on inputs `x` (no labels).

    A change of camera or light moves the statistics of what each layer sees long before it
    changes what a crack looks like; resetting the layers' means and variances to those of the
    new world (an exact average over x, not a moving one) recovers much of the accuracy lost
    to such a drift without a single gradient step. Returns the number of layers adapted
    (0 for a network without batch norm, which is left untouched).
    """
    layers = [m for m in model.modules() if isinstance(m, NORM_LAYERS)]
    if not layers or len(x) == 0:
        return 0
    dev = pick_device(device)
    model.to(dev)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch below
    was_training = model.training
    model.train()
    try:
        with torch.no_grad(), GUARD.step():
            for i in range(0, len(x), batch):
                model(torch.from_numpy(x[i : i + batch]).to(dev))
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(layers)


def _train_mode(model: nn.Module, freeze_norm: bool) -> None:
    model.train()
    if freeze_norm:
        for m in model.modules():
            if isinstance(m, NORM_LAYERS):
                m.eval()


def fit(
    model: nn.Module,
    x_train: npt.NDArray[np.float32],
    y_train: npt.NDArray[np.int64],
    x_holdout: npt.NDArray[np.float32],
    y_holdout: npt.NDArray[np.int64],
    n_classes: int,
    config: FitConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> FitReport:
    """Train in place with AdamW and cross-entropy; score on the holdout at the end."""
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    model.to(device)
    # Photos train channels-last: oneDNN's convolutions and batch norm run faster on that
    # layout on CPU (about 20% on the 2-core development machine). Only the training step
    # uses it; the model returns to the default layout below, so what is saved and exported
    # is the same either way.
    layout = torch.channels_last if x_train.ndim == 4 else torch.contiguous_format
    model.to(memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=config.learning_rate,
        total_steps=config.epochs * max(1, -(-len(x_train) // config.batch_size)),
    )
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(x_train).to(device).contiguous(memory_format=layout)
    yt = torch.from_numpy(y_train).to(device)
    gen = torch.Generator().manual_seed(config.seed)
    report = FitReport(device=str(device))
    started = time.monotonic()
    for epoch in range(1, config.epochs + 1):
        _train_mode(model, config.freeze_norm)
        t0 = time.monotonic()
        order = torch.randperm(len(xt), generator=gen).to(device)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            with GUARD.step():  # never while another thread's export traces
                logits = model(xt[idx])
                loss = loss_fn(logits, yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(dim=1) == yt[idx]).sum())
            total += len(idx)
        rep = EpochReport(
            epoch,
            loss_sum / max(total, 1),
            correct / max(total, 1),
            time.monotonic() - t0,
            config.epochs,
        )
        report.epochs.append(rep)
        if on_epoch is not None:
            on_epoch(rep)
    predicted = predict(model, x_holdout, device).argmax(axis=1)
    report.holdout_accuracy = accuracy(y_holdout, predicted)
    report.holdout_macro_f1 = macro_f1(y_holdout, predicted, n_classes)
    report.seconds = time.monotonic() - started
    model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return report
