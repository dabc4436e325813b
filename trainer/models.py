"""Torch models: the sensor 1D-CNN, normalising its input in the graph so ONNX takes raw data."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

# Leakage current and partial discharge are positive and heavy-tailed: log1p them first.
LOG_CHANNELS = 2


class SensorCNN(nn.Module):
    """A small 1D-CNN over [batch, channels, samples] windows; returns logits."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1))
        self.register_buffer("std", torch.ones(1, channels, 1))
        self.features = nn.Sequential(
            nn.Conv1d(channels, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(32, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(64 * 2, n_classes)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Raw samples to the normalised features the convolutions see."""
        logged = torch.log1p(torch.clamp(x[:, :LOG_CHANNELS], min=0.0))
        z = torch.cat([logged, x[:, LOG_CHANNELS:]], dim=1)
        return (z - self.mean) / self.std

    @torch.no_grad()
    def fit_normalisation(self, x: torch.Tensor) -> None:
        """Set the per-channel mean and std from training windows."""
        self.mean.zero_()
        self.std.fill_(1.0)
        z = self.transform(x)
        self.mean.copy_(z.mean(dim=(0, 2), keepdim=True))
        self.std.copy_(z.std(dim=(0, 2), keepdim=True).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.transform(x))
        # Mean and max over time: the mean sees baselines, the max sees pulses and bursts.
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
        logits: torch.Tensor = self.head(pooled)
        return logits


class WithProbabilities(nn.Module):
    """The served graph: logits through softmax, so consumers read probabilities directly."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


# Training-time shifts of a photo, in pixels each way: the camera placement varies about this much.
IMAGE_SHIFT = 4


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def jitter_photos(x: torch.Tensor, shift: int = IMAGE_SHIFT) -> torch.Tensor:
    """Each photo mirrored left-right (or not) and moved by up to `shift` pixels, at random.

    Both keep the class: the scenes are lit from either side and the string hangs anywhere
    near the middle. Only brightness and haze are left alone, so drift stays drift.
    """
    n = x.shape[0]
    mirror = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
    x = torch.where(mirror, x.flip(3), x)
    if shift <= 0:
        return x
    steps = torch.randint(-shift, shift + 1, (n, 2), device=x.device).to(x.dtype)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = steps[:, 0] * 2.0 / x.shape[3]
    theta[:, 1, 2] = steps[:, 1] * 2.0 / x.shape[2]
    grid = functional.affine_grid(theta, list(x.shape), align_corners=False)
    return functional.grid_sample(
        x, grid, mode="nearest", padding_mode="reflection", align_corners=False
    )


class ImageCNN(nn.Module):
    """A small 2D-CNN over [batch, 3, 64, 64] RGB photos scaled to 0..1; returns logits.

    The stem folds each 2x2 block of pixels into channels (space-to-depth, 64x64x3 to
    32x32x12), so the first convolution still sees every pixel (a crack is a line under a
    pixel wide) while it and everything after work at 32x32 or less: two conv-BN-ReLU blocks
    at 32x32, one at 16x16 and one at 8x8, channels doubling at each step, then global mean
    and max pooling. A training step costs about half what it did with a full-resolution
    first layer and paired blocks (measured on the 2-core development machine:
    docs/trainer.md, "The image bootstrap"), so the first model trains more epochs in less
    time. An older champion's weights do not fit this network; a retrain then starts cold.
    `width` is the channel count of the first layer; it is read back from saved weights (see
    image_width_of), so a warm start rebuilds the same network. In training mode every batch
    is mirrored and shifted at random (jitter_photos); the exported graph, built in eval
    mode, does neither.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_classes: int, width: int = 16) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))
        w = width
        self.stem = nn.PixelUnshuffle(2)
        self.features = nn.Sequential(
            *_conv_bn_relu(3 * 4, w),
            *_conv_bn_relu(w, w * 2),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w * 2, w * 4),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w * 4, w * 8),
        )
        self.head = nn.Linear(w * 16, n_classes)

    @torch.no_grad()
    def fit_normalisation(self, x: torch.Tensor) -> None:
        """Set the per-channel mean and std from training images."""
        self.mean.copy_(x.mean(dim=(0, 2, 3), keepdim=True))
        self.std.copy_(x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = jitter_photos(x)
        h = self.features(self.stem((x - self.mean) / self.std))
        # Mean and max over the image: grime tints the whole string, a crack is a few pixels.
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        logits: torch.Tensor = self.head(pooled)
        return logits


def image_width_of(state: dict[str, torch.Tensor]) -> int:
    """The `width` an ImageCNN state dict was built with."""
    return int(state["features.0.weight"].shape[0])
