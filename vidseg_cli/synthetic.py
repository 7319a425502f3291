"""Synthetic clips with exact ground truth, in two styles.

``scene``: a landscape under a sky filmed by a panning camera, with shaded objects of
natural-looking materials (fur, spots, wood, rock, fabric) walking over the ground in
perspective, passing in front of one another, casting shadows among unlabelled rocks; sensor
noise on every frame. The README's offline demo and vidseg's built-in benchmark.

``sprites``: flat noise-textured rectangles and ellipses bouncing over noise; cheap, and
what the tests build in memory.

``python -m vidseg_cli.synthetic OUT_DIR`` writes ``OUT_DIR/clip.mp4`` and
``OUT_DIR/mask.png`` (the first frame's palette mask).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from vidseg_cli import textures
from vidseg_cli.io.sinks import save_palette_png

STYLES = ("scene", "sprites")


@dataclass(frozen=True)
class Sprite:
    texture: np.ndarray  # (h, w, 3) uint8
    shape: np.ndarray  # (h, w) bool: ellipse or rectangle
    start: tuple[float, float]  # (y, x) top-left at frame 0
    velocity: tuple[float, float]  # pixels per frame
    wobble: float  # amplitude of a sinusoidal path, pixels


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour noise with a dominant hue, so objects differ from the background."""
    coarse = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    ys = np.linspace(0, coarse.shape[0] - 1.001, h)
    xs = np.linspace(0, coarse.shape[1] - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    c = coarse
    smooth = (
        c[y0][:, x0] * (1 - fy) * (1 - fx)
        + c[y0 + 1][:, x0] * fy * (1 - fx)
        + c[y0][:, x0 + 1] * (1 - fy) * fx
        + c[y0 + 1][:, x0 + 1] * fy * fx
    )
    tint = rng.integers(0, 256, size=3).astype(np.float32)
    fine = rng.normal(0, 12, size=(h, w, 3))
    return np.clip(0.5 * smooth + 0.5 * tint + fine, 0, 255).astype(np.uint8)


def _sprite(rng: np.random.Generator, height: int, width: int) -> Sprite:
    h = int(rng.integers(height // 5, height // 2.5))
    w = int(rng.integers(width // 6, width // 3))
    yy, xx = np.mgrid[:h, :w]
    if rng.random() < 0.5:
        shape = ((yy - h / 2 + 0.5) / (h / 2)) ** 2 + ((xx - w / 2 + 0.5) / (w / 2)) ** 2 <= 1
    else:
        shape = np.ones((h, w), dtype=bool)
    start = (float(rng.uniform(0, height - h)), float(rng.uniform(0, width - w)))
    velocity = (float(rng.uniform(-1.5, 1.5)), float(rng.uniform(-2.5, 2.5)))
    return Sprite(_texture(rng, h, w), shape, start, velocity, float(rng.uniform(0, 6)))


def _position(sprite: Sprite, t: int, height: int, width: int) -> tuple[int, int]:
    """Bounce inside the frame, with a sinusoidal wobble."""
    h, w = sprite.shape.shape
    y = _bounce(sprite.start[0] + sprite.velocity[0] * t + sprite.wobble * math.sin(t / 7), height - h)
    x = _bounce(sprite.start[1] + sprite.velocity[1] * t, width - w)
    return int(round(y)), int(round(x))


def _bounce(value: float, limit: float) -> float:
    if limit <= 0:
        return 0.0
    period = 2 * limit
    value = value % period
    return value if value <= limit else period - value


def frames(
    length: int, height: int = 120, width: int = 160, objects: int = 2, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (rgb (H, W, 3) uint8, labels (H, W) uint8) for ``length`` frames."""
    rng = np.random.default_rng(seed)
    background = _texture(rng, height, width)
    sprites = [_sprite(rng, height, width) for _ in range(objects)]
    for t in range(length):
        image = background.copy()
        labels = np.zeros((height, width), dtype=np.uint8)
        for object_id, sprite in enumerate(sprites, start=1):  # later objects occlude earlier
            y, x = _position(sprite, t, height, width)
            h, w = sprite.shape.shape
            region = (slice(y, y + h), slice(x, x + w))
            image[region][sprite.shape] = sprite.texture[sprite.shape]
            labels[region][sprite.shape] = object_id
        yield image, labels


@dataclass(frozen=True)
class _Actor:
    image: np.ndarray  # (h, w, 3) float: the shaded material at the nearest depth
    alpha: np.ndarray  # (h, w) soft coverage
    x: float  # screen x of the centre at frame 0
    vx: float  # pixels per frame (bounces at the frame's edges)
    depth: float  # 0 at the horizon .. 1 at the bottom of the frame, at frame 0
    vdepth: float  # per frame
    gait: float  # phase of the squash-and-stretch


def _actor(rng: np.random.Generator, kind: str, height: int, width: int, side: int) -> _Actor:
    h = int(height * rng.uniform(0.32, 0.5))
    w = int(h * rng.uniform(0.7, 1.5))
    alpha, shading = textures.blob(rng, h, w)
    image = textures.material(rng, kind, h, w) * shading[..., None]
    x = width * (rng.uniform(0.15, 0.35) if side == 0 else rng.uniform(0.65, 0.85))
    vx = rng.uniform(2.5, 4.5) * (1 if side == 0 else -1)  # towards each other: they meet and one hides the other
    depth = rng.uniform(0.75, 0.95) if side == 0 else rng.uniform(0.5, 0.65)
    return _Actor(image, alpha, x, vx, depth, rng.uniform(-0.004, 0.004), rng.uniform(0, 6.3))


def _landscape(rng: np.random.Generator, height: int, width: int, horizon: int) -> np.ndarray:
    """Sky above the horizon, ground below it fading into haze, unlabelled rocks on it."""
    world = np.empty((height, width, 3), np.float32)
    world[:horizon] = textures.sky(rng, horizon, width)
    ground = textures.material(rng, "ground", height - horizon, width)
    haze = np.exp(-np.arange(height - horizon, dtype=np.float32) / (0.2 * (height - horizon)))[:, None, None]
    world[horizon:] = ground * (1 - 0.6 * haze) + world[horizon - 1 : horizon].mean(1, keepdims=True) * 0.6 * haze
    for _ in range(int(rng.integers(4, 8))):
        depth = rng.uniform(0.1, 1.0)
        h = max(6, int((height - horizon) * depth * rng.uniform(0.1, 0.25)))
        w = int(h * rng.uniform(1.0, 2.2))
        alpha, shading = textures.blob(rng, h, w)
        rock = textures.material(rng, "rock", h, w) * shading[..., None]
        foot = horizon + int(depth * (height - horizon - 1))
        _draw(world, rock, alpha, foot - h + h // 5, int(rng.uniform(-w / 2, width - w / 2)))
    return world


def _draw(canvas: np.ndarray, image: np.ndarray, alpha: np.ndarray, top: int, left: int, labels: np.ndarray | None = None, label: int = 0) -> None:
    """Alpha-blend ``image`` onto ``canvas`` at (top, left), clipped to the canvas; where the
    coverage is over one half, ``labels`` gets ``label``."""
    h, w = alpha.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, canvas.shape[0]), min(left + w, canvas.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    a = alpha[y0 - top : y1 - top, x0 - left : x1 - left, None]
    region = canvas[y0:y1, x0:x1]
    region[:] = region * (1 - a) + image[y0 - top : y1 - top, x0 - left : x1 - left] * a
    if labels is not None:
        labels[y0:y1, x0:x1][a[..., 0] > 0.5] = label


def scene_frames(
    length: int, height: int = 270, width: int = 480, objects: int = 2, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (rgb (H, W, 3) uint8, labels (H, W) uint8) for ``length`` frames of a scene:
    objects 1..N walk over a landscape in perspective (nearer is lower and bigger, and drawn
    over farther ones), the camera pans, and every frame gets sensor noise."""
    rng = np.random.default_rng(seed)
    horizon = int(height * rng.uniform(0.3, 0.4))
    pan = rng.uniform(0.4, 1.2) * rng.choice([-1, 1])
    world = _landscape(rng, height, width + int(abs(pan) * length) + 2, horizon)
    kinds = rng.permutation([k for k in textures.MATERIALS if k != "ground"])
    actors = [_actor(rng, str(kinds[i % len(kinds)]), height, width, side=i % 2) for i in range(objects)]
    start = 0 if pan > 0 else world.shape[1] - width
    for t in range(length):
        camera = start + int(round(pan * t))
        image = world[:, camera : camera + width].copy()
        labels = np.zeros((height, width), dtype=np.uint8)
        placed = [(_place(actor, t, height, width, horizon), i + 1, actor) for i, actor in enumerate(actors)]
        for (foot, scale, centre), object_id, actor in sorted(placed, key=lambda p: p[0][0]):  # far to near
            _draw_actor(image, labels, actor, foot, scale, centre, object_id, t)
        image += rng.normal(0, 2.5, size=image.shape).astype(np.float32)
        yield np.clip(image, 0, 255).astype(np.uint8), labels


def _place(actor: _Actor, t: int, height: int, width: int, horizon: int) -> tuple[int, float, float]:
    """(foot row, scale, centre x) of an actor at frame t."""
    depth = _bounce(actor.depth - 0.5 + actor.vdepth * t, 0.5) + 0.5  # stays in 0.5 .. 1
    foot = horizon + depth * (height - horizon - 2)
    scale = 0.35 + 0.65 * depth
    half = actor.alpha.shape[1] * scale / 2
    centre = half + _bounce(actor.x - half + actor.vx * t, max(1.0, width - 2 * half))
    return int(foot), scale, centre


def _draw_actor(image: np.ndarray, labels: np.ndarray, actor: _Actor, foot: int, scale: float, centre: float, object_id: int, t: int) -> None:
    squash = 1 + 0.05 * math.sin(t / 2.5 + actor.gait)  # a gait: taller and thinner in turn
    h = max(4, int(actor.alpha.shape[0] * scale * squash))
    w = max(4, int(actor.alpha.shape[1] * scale / squash))
    alpha = np.asarray(Image.fromarray(actor.alpha).resize((w, h), Image.BILINEAR))
    rgb = np.stack([np.asarray(Image.fromarray(actor.image[..., c]).resize((w, h), Image.BILINEAR)) for c in range(3)], -1)
    left = int(round(centre - w / 2))
    depth = max(3, h // 6)  # an elliptic shadow at the foot
    sy, sx = np.mgrid[:depth, :w]
    shadow = np.clip(1 - ((sx - w / 2) / (w / 2)) ** 2 - ((sy - depth / 2) / (depth / 2)) ** 2, 0, 1) * 0.5
    _draw(image, np.zeros((depth, w, 3), np.float32), shadow, foot - depth // 2, left + w // 8)
    _draw(image, rgb, alpha, foot - h, left, labels, object_id)


def frames_of(style: str, length: int, height: int, width: int, objects: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The frames of either style."""
    if style == "scene":
        return scene_frames(length, height, width, objects, seed)
    if style == "sprites":
        return frames(length, height, width, objects, seed)
    raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")


def write_clip(
    folder: Path, length: int = 60, height: int = 240, width: int = 320, objects: int = 2, seed: int = 0, style: str = "sprites"
) -> tuple[Path, Path]:
    """Write ``clip.mp4`` (H.264, 25 fps) and ``mask.png`` (frame 0) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    clip, mask = folder / "clip.mp4", folder / "mask.png"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12"}
        for index, (image, labels) in enumerate(frames_of(style, length, height, width, objects, seed)):
            if index == 0:
                save_palette_png(labels, mask)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return clip, mask


def write_davis(
    root: Path, sequences: int = 3, length: int = 40, height: int = 240, width: int = 320, style: str = "sprites"
) -> Path:
    """A small dataset in DAVIS layout (JPEGImages/, Annotations/) with exact truth: sprites
    with 1, 2, 3 objects in turn, or scenes with 2 and 3."""
    for number in range(sequences):
        name = f"synthetic-{number}"
        images, annotations = root / "JPEGImages" / name, root / "Annotations" / name
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        objects = 2 + number % 2 if style == "scene" else 1 + number % 3
        clip = frames_of(style, length, height, width, objects, seed=100 + number)
        for index, (image, labels) in enumerate(clip):
            Image.fromarray(image).save(images / f"{index:05d}.jpg", quality=95)
            save_palette_png(labels, annotations / f"{index:05d}.png")
    return root


DEMO_SIZE = (270, 480)  # the demo clip's height and width


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic clip and its first-frame mask.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", choices=STYLES, default="scene")
    args = parser.parse_args()
    height, width = DEMO_SIZE if args.style == "scene" else (240, 320)
    clip, mask = write_clip(args.out, args.frames, height, width, args.objects, args.seed, args.style)
    print(clip)
    print(mask)


if __name__ == "__main__":
    main()
