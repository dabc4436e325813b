"""Synthetic insulator photos: a procedural, vectorised generator of 64x64 RGB inspection images.

Each image shows a string of insulator discs hanging from a pin against the sky, seen by a
field camera. The four condition classes (schemas.contracts.INSULATOR_CLASSES) differ as they
do in real inspections:
- healthy: clean discs (a little natural dust at most);
- contaminated: a brown, blotchy grime layer over the discs, with dark specks;
- cracked: thin dark lines across one or more discs;
- flashover_damaged: dark scorched patches at the disc rims and a burn track along the string.
Lighting (gain, colour temperature, gamma, side light), camera placement (offset, tilt, scale),
disc material, blur and sensor noise vary per image, and faults have a severity, so early faults
look almost healthy and the classes overlap a little. Everything is computed on whole batches
of images at once with numpy; 2,000 images take well under a few seconds on one core.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from driftline.schemas.contracts import IMAGE_SIZE, INSULATOR_CLASSES

HEALTHY, CONTAMINATED, CRACKED, FLASHOVER = range(len(INSULATOR_CLASSES))
CHUNK = 256
MAX_CRACKS = 3
MAX_SCORCHES = 4

# Disc materials, linear RGB 0..1: toughened glass, brown porcelain, white porcelain, grey polymer.
MATERIALS = np.array(
    [[0.30, 0.58, 0.52], [0.52, 0.28, 0.18], [0.86, 0.85, 0.80], [0.55, 0.57, 0.58]],
    dtype=np.float32,
)
GRIME = np.array([0.36, 0.27, 0.16], dtype=np.float32)
SOOT = np.array([0.07, 0.05, 0.04], dtype=np.float32)
METAL = np.array([0.32, 0.32, 0.34], dtype=np.float32)


@dataclass(frozen=True)
class ImageConditions:
    """World parameters a drift scenario moves; the defaults are the training world."""

    brightness: float = 1.0
    haze: float = 0.0
    noise_scale: float = 1.0
    blur_fraction: float = 0.25


def _col(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Per-image scalars shaped [n, 1, 1] for broadcasting over pixels."""
    return values.astype(np.float32)[:, None, None]


def _upsampled_noise(rng: np.random.Generator, n: int, cells: int) -> npt.NDArray[np.float32]:
    """Smooth blotchy noise in 0..1, [n, H, W]: a coarse random grid, bilinearly upsampled."""
    grid = rng.random((n, cells + 1, cells + 1)).astype(np.float32)
    pos = np.linspace(0, cells, IMAGE_SIZE, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i0.astype(np.float32)
    rows = grid[:, i0, :] * (1 - f)[None, :, None] + grid[:, i0 + 1, :] * f[None, :, None]
    out = rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]
    return out.astype(np.float32, copy=False)


def _segment_distance(
    xx: npt.NDArray[np.float32],
    yy: npt.NDArray[np.float32],
    x0: npt.NDArray[np.float32],
    y0: npt.NDArray[np.float32],
    x1: npt.NDArray[np.float32],
    y1: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """Distance of every pixel to the segment (x0, y0)-(x1, y1), per image: [n, H, W]."""
    dx, dy = x1 - x0, y1 - y0
    length2 = np.maximum(dx * dx + dy * dy, 1e-6)
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / length2, 0.0, 1.0)
    px, py = x0 + t * dx - xx, y0 + t * dy - yy
    dist: npt.NDArray[np.float32] = np.sqrt(px * px + py * py)
    return dist


def _box_blur(img: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """3x3 box blur of [n, H, W, 3] with edge padding."""
    padded = np.pad(img, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    out = np.zeros_like(img)
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE]
    return out / 9.0


def _render(
    rng: np.random.Generator, classes: npt.NDArray[np.int64], world: ImageConditions
) -> npt.NDArray[np.uint8]:
    n = len(classes)
    size = IMAGE_SIZE
    yy = np.arange(size, dtype=np.float32)[None, :, None] * np.ones((1, 1, size), np.float32)
    xx = np.arange(size, dtype=np.float32)[None, None, :] * np.ones((1, size, 1), np.float32)
    cls = classes[:, None, None]

    # Sky: a vertical gradient between two blue-grey tones, with soft clouds.
    top = np.stack(
        [rng.uniform(0.35, 0.6, n), rng.uniform(0.5, 0.75, n), rng.uniform(0.7, 0.95, n)]
    )
    bottom = top * rng.uniform(1.05, 1.35, n)[None, :]
    frac = yy / (size - 1)
    sky = (top.T[:, None, None, :] * (1 - frac[..., None])) + (
        bottom.T[:, None, None, :] * frac[..., None]
    )
    clouds = _upsampled_noise(rng, n, 4)[..., None] * _col(rng.uniform(0.0, 0.25, n))[..., None]
    img = np.clip(sky + clouds, 0.0, 1.0).astype(np.float32)

    # Camera placement: where the string hangs, its tilt and scale.
    spacing = _col(rng.uniform(5.5, 7.5, n))
    discs = rng.integers(5, 9, n)
    y_start = _col(rng.uniform(3.0, 9.0, n))
    y_end = y_start + _col(discs.astype(np.float64)) * spacing
    cx0 = _col(rng.uniform(26.0, 38.0, n))
    tilt = _col(rng.uniform(-0.2, 0.2, n))
    cx = cx0 + tilt * (yy - 32.0)
    rx = _col(rng.uniform(10.0, 16.0, n))
    ry = spacing * 0.42

    # The pin and caps: a dark metal rod through the string.
    rod = (np.abs(xx - cx) < 1.3) & (yy > y_start - 5) & (yy < y_end + 2)
    img = np.where(rod[..., None], METAL * _col(rng.uniform(0.7, 1.2, n))[..., None], img)

    # Discs: flattened ellipses stacked along the string.
    v = yy - y_start
    k = np.floor(v / spacing)
    d = (v - (k + 0.5) * spacing) / ry
    u = (xx - cx) / rx
    inside = (u * u + d * d <= 1.0) & (k >= 0) & (k < _col(discs.astype(np.float64)))
    material = MATERIALS[rng.integers(0, len(MATERIALS), n)] * rng.uniform(0.85, 1.15, (n, 3))
    light_side = _col(rng.choice([-1.0, 1.0], n) * rng.uniform(0.05, 0.3, n))
    shade = 1.0 - 0.35 * u * u - 0.25 * d + light_side * u
    highlight = np.exp(-((u + 0.35 * np.sign(light_side)) ** 2 / 0.03 + (d + 0.45) ** 2 / 0.08))
    disc_rgb = material[:, None, None, :].astype(np.float32) * shade[..., None]
    disc_rgb = disc_rgb + 0.35 * highlight[..., None]
    img = np.where(inside[..., None], disc_rgb, img)

    severity = np.where(classes == HEALTHY, 0.0, rng.beta(2.0, 1.6, n) * 0.85 + 0.15)
    sev = _col(severity)

    # Contamination: grime blotches over the discs (healthy discs carry a trace of dust).
    dust = np.where(classes == CONTAMINATED, severity, rng.uniform(0.0, 0.12, n))
    blotch = _upsampled_noise(rng, n, 6)
    alpha = inside * _col(dust) * np.clip(0.35 + 0.9 * blotch, 0.0, 1.0) * 0.8
    img = img * (1 - alpha[..., None]) + GRIME * alpha[..., None]
    specks = inside & (rng.random((n, size, size), dtype=np.float32) < _col(dust) * 0.08)
    img = np.where(specks[..., None], img * 0.45, img)

    # Cracks: thin dark segments across discs.
    cracked = cls == CRACKED
    n_cracks = rng.integers(1, MAX_CRACKS + 1, n)
    for j in range(MAX_CRACKS):
        active = cracked & _col((j < n_cracks).astype(np.float64)).astype(bool)
        disc = np.floor(rng.random(n) * discs)
        cy = y_start + _col(disc + 0.5) * spacing
        # A crack starts anywhere on the disc face and runs across it, towards the far rim,
        # within about 35 degrees of the disc's plane (the disc is seen nearly edge-on).
        start = rng.uniform(-0.7, 0.7, n)
        x0 = cx0 + tilt * (cy - 32.0) + _col(start) * rx
        y0 = cy + _col(rng.uniform(-0.4, 0.4, n)) * ry
        angle = rng.uniform(-0.6, 0.6, n) + np.where(start > 0, np.pi, 0.0)
        length = _col(rng.uniform(4.0, 11.0, n)) * (0.5 + sev)
        x1 = x0 + _col(np.cos(angle)) * length
        y1 = y0 + _col(np.sin(angle)) * length * 0.5
        dist = _segment_distance(xx, yy, x0, y0, x1, y1)
        width = _col(rng.uniform(0.55, 0.9, n))
        line = active & inside & (dist < width)
        img = np.where(line[..., None], img * (0.25 + 0.3 * (1 - sev))[..., None], img)

    # Flashover: soot patches at the disc rims, and a burn track down one side of the string.
    burnt = cls == FLASHOVER
    n_scorch = rng.integers(2, MAX_SCORCHES + 1, n)
    soot = np.zeros((n, size, size), dtype=np.float32)
    for j in range(MAX_SCORCHES):
        active = burnt & _col((j < n_scorch).astype(np.float64)).astype(bool)
        disc = np.floor(rng.random(n) * discs)
        sy = y_start + _col(disc + 0.5) * spacing
        rim = _col(rng.choice([-1.0, 1.0], n) * rng.uniform(0.4, 1.0, n))
        sx = cx0 + tilt * (sy - 32.0) + rim * rx
        sigma2 = _col(rng.uniform(1.5, 3.5, n) ** 2)
        blob = np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * sigma2))
        soot = np.maximum(soot, active * blob * inside)
    side = _col(rng.choice([-1.0, 1.0], n))
    track_x = cx + side * rx * _col(rng.uniform(0.6, 0.95, n))
    track_len = _col(rng.uniform(0.3, 1.0, n))
    track = (
        burnt & (np.abs(xx - track_x) < 1.6) & (yy > y_start) & (v < (y_end - y_start) * track_len)
    )
    soot = np.maximum(soot, track * 0.7 * inside)
    alpha = np.clip(soot * (0.45 + 0.5 * sev), 0.0, 0.95)
    img = img * (1 - alpha[..., None]) + SOOT * alpha[..., None]

    # Lighting and camera: gain, colour temperature, gamma, haze, blur and sensor noise.
    gain = rng.uniform(0.7, 1.25, n) * world.brightness
    tint = 1.0 + rng.normal(0.0, 0.05, (n, 3))
    img = img * (gain[:, None] * tint)[:, None, None, :].astype(np.float32)
    img = img * (1 - world.haze) + world.haze * 0.8
    img = np.clip(img, 0.0, 1.0) ** _col(rng.uniform(0.85, 1.2, n))[..., None]
    blurred = rng.random(n) < world.blur_fraction
    if blurred.any():
        img[blurred] = _box_blur(img[blurred])
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    img = img + noise * _col(rng.uniform(0.01, 0.035, n) * world.noise_scale)[..., None]
    out: npt.NDArray[np.uint8] = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


def generate_images(
    rng: np.random.Generator,
    classes: npt.NDArray[np.int64],
    world: ImageConditions = ImageConditions(),
) -> npt.NDArray[np.uint8]:
    """Photos [len(classes), 64, 64, 3] uint8 RGB of insulators in the given condition classes."""
    if len(classes) == 0:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    starts = range(0, len(classes), CHUNK)
    if len(starts) == 1:
        return _render(rng, classes, world)
    # Many chunks (a bootstrap set): one generator spawned per chunk, so the photos are the
    # same whatever the thread count, and the chunks rendered on every core (numpy lets go
    # of the GIL inside its array operations; 8,000 photos took 15 s on one core, 9 s on two).
    rngs = rng.spawn(len(starts))
    with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1)) as pool:
        parts = list(pool.map(lambda r, i: _render(r, classes[i : i + CHUNK], world), rngs, starts))
    return np.concatenate(parts)


def labelled_images(
    n: int, seed: int, world: ImageConditions = ImageConditions()
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """n photos with balanced classes, for bootstrap training and tests."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.arange(n) % len(INSULATOR_CLASSES)).astype(np.int64)
    return generate_images(rng, classes, world), classes


def encode_png(image: npt.NDArray[np.uint8]) -> bytes:
    """One [H, W, 3] uint8 image as PNG bytes (lossless)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(out, format="PNG")
    return out.getvalue()


def encode_jpeg(image: npt.NDArray[np.uint8], quality: int = 90) -> bytes:
    """One [H, W, 3] uint8 image as JPEG bytes, as an inspection camera would send it."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(out, format="JPEG", quality=quality)
    return out.getvalue()
