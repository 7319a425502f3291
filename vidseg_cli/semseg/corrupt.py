"""Degraded frames: what a street camera meets for a frame or two, and what a memory of the
frames before should carry the segmenter through.

Four kinds, each strong enough to cost a single-frame network accuracy and each something
the previous frames do not suffer:
- ``blur``: motion blur, a line kernel 9-25 px long (a bump, a fast pan);
- ``noise``: sensor noise, Gaussian on each channel with a sigma of 20-40 grey levels (a
  dark scene pushed by gain);
- ``occluder``: an opaque dark blob over 10-25% of the frame (a wiper, a hand, a leaf on
  the lens); the labels under it stay the scene's, which only a memory can know;
- ``glare``: a saturating light falling off from a point, with the contrast washed out
  (sun in the lens).

``corrupt_clip`` degrades every ``every``-th frame (the third by default: frames 2, 5, 8,
...), cycling through the kinds, from a seed: the same seed gives the same frames, so a
bench run can be repeated and its corrupted frames scored by anyone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("blur", "noise", "occluder", "glare")


def corrupt(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A degraded copy of ``image`` (H, W, 3) uint8."""
    if kind not in KINDS:
        raise ValueError(f"unknown corruption {kind!r}; choose from {', '.join(KINDS)}")
    pixels = image.astype(np.float32)
    degraded = {"blur": _motion_blur, "noise": _noise, "occluder": _occluder, "glare": _glare}[kind](pixels, rng)
    return np.clip(degraded, 0, 255).round().astype(np.uint8)


def corrupted_frames(count: int, every: int = 3) -> list[int]:
    """The indices ``corrupt_clip`` degrades: every ``every``-th frame, the first kept clean
    (a memory needs something to start from)."""
    return list(range(every - 1, count, every))


def corrupt_clip(
    images: Sequence[np.ndarray], every: int = 3, seed: int = 0, kinds: Sequence[str] = KINDS
) -> tuple[list[np.ndarray], dict[int, str]]:
    """The clip with every ``every``-th frame degraded, and {index: kind} of those frames."""
    rng = np.random.default_rng(seed)
    out, kinds_used = list(images), {}
    for number, index in enumerate(corrupted_frames(len(images), every)):
        kind = kinds[number % len(kinds)]
        out[index] = corrupt(images[index], kind, rng)
        kinds_used[index] = kind
    return out, kinds_used


def _motion_blur(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    length = int(rng.integers(9, 26)) | 1  # odd, so the line is centred
    angle = rng.uniform(0, math.pi)
    kernel = np.zeros((length, length), np.float32)
    centre = length // 2
    for step in np.linspace(-centre, centre, 4 * length):
        kernel[round(centre + step * math.sin(angle)), round(centre + step * math.cos(angle))] = 1
    kernel /= kernel.sum()
    image = torch.from_numpy(pixels).permute(2, 0, 1)[:, None]  # each channel alone
    padded = F.pad(image, (centre,) * 4, mode="replicate")
    return F.conv2d(padded, torch.from_numpy(kernel)[None, None])[:, 0].permute(1, 2, 0).numpy()


def _noise(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return pixels + rng.normal(0, rng.uniform(20, 40), size=pixels.shape).astype(np.float32)


def _occluder(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dark, slightly textured ellipse, which is a shape no CamVid class has."""
    height, width = pixels.shape[:2]
    area = rng.uniform(0.10, 0.25) * height * width
    aspect = rng.uniform(0.5, 2.0)
    ry, rx = math.sqrt(area / math.pi / aspect), math.sqrt(area * aspect / math.pi)
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    y, x = np.ogrid[:height, :width]
    inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    shade = rng.uniform(10, 50) + rng.normal(0, 4, size=(height, width, 1)).astype(np.float32)
    return np.where(inside[..., None], shade, pixels)


def _glare(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    cy, cx = rng.uniform(0, 0.5) * height, rng.uniform(0, 1) * width
    spread = rng.uniform(0.3, 0.6) * max(height, width)
    y, x = np.ogrid[:height, :width]
    light = np.exp(-(((y - cy) ** 2 + (x - cx) ** 2) / (2 * spread**2))).astype(np.float32)[..., None]
    washed = pixels * (1 - 0.6 * light) + 255 * 0.6 * light  # contrast falls where the light is
    return washed + 120 * light
