"""Synthetic clips: textured objects moving over a textured background, exact ground truth.

Used by the tests, by the README's offline demo and as vidseg's built-in benchmark.
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

from vidseg_cli.io.sinks import save_palette_png


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


def write_clip(folder: Path, length: int = 60, height: int = 240, width: int = 320, objects: int = 2, seed: int = 0) -> tuple[Path, Path]:
    """Write ``clip.mp4`` (H.264, 25 fps) and ``mask.png`` (frame 0) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    clip, mask = folder / "clip.mp4", folder / "mask.png"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12"}
        for index, (image, labels) in enumerate(frames(length, height, width, objects, seed)):
            if index == 0:
                save_palette_png(labels, mask)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return clip, mask


def write_davis(root: Path, sequences: int = 3, length: int = 40, height: int = 240, width: int = 320) -> Path:
    """A small dataset in DAVIS layout (JPEGImages/, Annotations/) with exact truth."""
    for number in range(sequences):
        name = f"synthetic-{number}"
        images, annotations = root / "JPEGImages" / name, root / "Annotations" / name
        images.mkdir(parents=True, exist_ok=True)
        annotations.mkdir(parents=True, exist_ok=True)
        clip = frames(length, height, width, objects=1 + number % 3, seed=100 + number)
        for index, (image, labels) in enumerate(clip):
            Image.fromarray(image).save(images / f"{index:05d}.jpg", quality=95)
            save_palette_png(labels, annotations / f"{index:05d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic clip and its first-frame mask.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    clip, mask = write_clip(args.out, args.frames, objects=args.objects, seed=args.seed)
    print(clip)
    print(mask)


if __name__ == "__main__":
    main()
