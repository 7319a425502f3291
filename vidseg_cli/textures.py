"""Procedural natural textures for synthetic video: fractal noise coloured as ground, rock,
wood, fur, spots and sky, and shaded blob-shaped objects.

Fractal Brownian motion (octaves of smoothly upsampled noise, each octave half the
amplitude of the one before) has the 1/f spectrum of natural images, which is what a
backbone trained on photographs responds to; flat colour noise (the sprites of
``synthetic.frames``) does not look like anything a video model has seen.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MATERIALS = ("ground", "rock", "wood", "fur", "spots", "fabric")


def fbm(rng: np.random.Generator, height: int, width: int, cells: float = 3.0, octaves: int = 6, stretch: float = 1.0) -> np.ndarray:
    """(H, W) fractal noise in [0, 1]; ``cells`` noise cells across the short side at the
    coarsest octave, ``stretch`` > 1 elongates the grain horizontally (fur, fibres)."""
    out = np.zeros((height, width), np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        across = cells * 2**octave
        rows = max(2, int(across * height / min(height, width)) + 2)
        cols = max(2, int(across * width / min(height, width) / stretch) + 2)
        grid = rng.normal(size=(rows, cols)).astype(np.float32)
        out += amplitude * _resize(grid, height, width)
        amplitude *= 0.5  # the percentile stretch below sets the range
    low, high = np.percentile(out, (1, 99))
    return np.clip((out - low) / max(high - low, 1e-6), 0, 1)


def _resize(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC), np.float32)


def colourise(values: np.ndarray, stops: list[tuple[float, tuple[int, int, int]]]) -> np.ndarray:
    """Map values in [0, 1] through a colour ramp: (position, rgb) stops in order."""
    positions = [p for p, _ in stops]
    channels = [np.interp(values, positions, [c[i] for _, c in stops]) for i in range(3)]
    return np.stack(channels, axis=-1).astype(np.float32)


def _ramp(rng: np.random.Generator, base: tuple[int, int, int], spread: float) -> list[tuple[float, tuple[int, int, int]]]:
    """A dark-to-light ramp around a base colour with a little hue drift."""
    base_ = np.array(base, np.float32) * rng.uniform(0.8, 1.2, size=3)
    drift = rng.uniform(-25, 25, size=3)
    dark, light = base_ * (1 - spread) - drift, base_ * (1 + spread) + drift
    clip = lambda c: tuple(int(v) for v in np.clip(c, 0, 255))  # noqa: E731
    return [(0.0, clip(dark)), (0.5, clip(base_)), (1.0, clip(light))]


def material(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float RGB of one material."""
    if kind == "ground":
        stops = [(0.0, (70, 55, 35)), (0.45, (110, 95, 60)), (0.7, (95, 120, 55)), (1.0, (140, 150, 90))]
        coarse = colourise(fbm(rng, height, width, cells=2), stops)
        detail = fbm(rng, height, width, cells=24, octaves=3)[..., None]
        return coarse * (0.75 + 0.5 * detail)
    if kind == "rock":
        ridged = 1 - np.abs(2 * fbm(rng, height, width, cells=3) - 1)
        grey = rng.uniform(90, 160)
        return colourise(ridged, _ramp(rng, (grey, grey * 0.97, grey * 0.92), 0.5))
    if kind == "wood":
        y = np.arange(height, dtype=np.float32)[:, None]
        rings = np.sin(2 * np.pi * (y / height * rng.uniform(4, 8) + 2.5 * fbm(rng, height, width, cells=2)))
        return colourise(0.5 + 0.5 * rings, _ramp(rng, (150, 100, 55), 0.35))
    if kind == "fur":
        return colourise(fbm(rng, height, width, cells=6, stretch=rng.uniform(4, 8)), _ramp(rng, (170, 130, 90), 0.45))
    if kind == "spots":
        spots = fbm(rng, height, width, cells=5, octaves=4)
        two_tone = 1 / (1 + np.exp(-(spots - 0.55) * 25))
        light = colourise(fbm(rng, height, width, cells=8, octaves=3), _ramp(rng, (215, 170, 90), 0.2))
        return light * (1 - 0.75 * two_tone[..., None])
    if kind == "fabric":
        y, x = np.mgrid[:height, :width].astype(np.float32)
        period = rng.uniform(6, 14)
        stripes = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * (x + 0.3 * y) / period))
        a, b = (rng.uniform(30, 230, size=3) for _ in range(2))
        weave = fbm(rng, height, width, cells=30, octaves=2)[..., None]
        return (a * stripes[..., None] + b * (1 - stripes[..., None])) * (0.8 + 0.35 * weave)
    raise ValueError(f"unknown material {kind!r}")


def sky(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A sky: a blue gradient with soft clouds."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    top, horizon = np.array([70, 120, 200], np.float32), np.array([190, 210, 230], np.float32)
    gradient = top * (1 - y) + horizon * y
    clouds = np.clip((fbm(rng, height, width, cells=2, octaves=5) - 0.45) * 2.2, 0, 1)[..., None]
    return gradient * (1 - clouds) + 245 * clouds * np.ones((1, 1, 3), np.float32)


def blob(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An irregular rounded shape filling (H, W): (alpha in [0, 1] with soft edges, shading
    in [0.35, 1] from a light above-left on its dome-shaped surface)."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    u, v = (x + 0.5) / width * 2 - 1, (y + 0.5) / height * 2 - 1
    angle, radius = np.arctan2(v, u), np.hypot(u, v)
    edge = 0.82 + sum(rng.uniform(0, 0.14) / k * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 6))
    inside = radius / edge
    alpha = np.clip((1 - inside) * min(height, width) / 3, 0, 1)  # about 1.5 pixels of soft edge
    dome = np.sqrt(np.clip(1 - inside**2, 0, 1))
    normal = np.stack([u * 0.8, v * 0.8, dome], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-6
    light = np.array([-0.45, -0.6, 0.66], np.float32)
    shading = 0.35 + 0.65 * np.clip(normal @ (light / np.linalg.norm(light)), 0, 1)
    return alpha, shading
