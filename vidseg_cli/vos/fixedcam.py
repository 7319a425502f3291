"""A fixed-camera benchmark built from a dataset in DAVIS layout: what sparse and reuse modes
are for, and what DAVIS (a moving camera in nearly every shot) never shows.

Each clip holds one sequence's first frame still as the scene, and walks another sequence's
object across it: the object cut out of its own frames by its own masks (so it moves its
limbs as it did when filmed), scaled to a fifth of the frame's height or so, walking and
pausing in turn. The camera is a real one: every frame gets sensor noise and a slow
brightness drift and is JPEG-encoded again, so no two frames are equal even where nothing
moves. The truth is the pasted object's mask, on every frame.

    python -m vidseg_cli.vos.fixedcam ../shared/data/davis16/val-dev fixedcam/

writes ``fixedcam/JPEGImages/<clip>/*.jpg`` and ``fixedcam/Annotations/<clip>/*.png``
(one clip per source sequence), which ``vidseg bench --data fixedcam`` scores.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.sinks import save_palette_png

NOISE = 2.0  # sensor noise, grey levels (sigma)
DRIFT = 0.04  # brightness drifts by up to this share, over DRIFT_PERIOD frames
DRIFT_PERIOD = 90
QUALITY = 90  # JPEG quality of every frame
ACTOR_HEIGHT = (0.25, 0.45)  # the pasted object's height, as a share of the frame's
STRIDE = (2.0, 5.0)  # walking speed, pixels per frame at 480 rows
WALK, PAUSE = (8, 20), (10, 30)  # frames of each walk and each pause


@dataclass
class Cutout:
    """One source frame's object: its RGB and alpha in its bounding box."""

    image: np.ndarray  # (h, w, 3) uint8
    alpha: np.ndarray  # (h, w) float in [0, 1]

    @classmethod
    def of(cls, image: np.ndarray, mask: np.ndarray) -> Cutout:
        """The object a (H, W) bool ``mask`` marks in ``image``, cut out to its bounding box."""
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        return cls(image[box], mask[box].astype(np.float32))


def cutouts(frames: Path, annotations: Path) -> list[Cutout]:
    """Every frame of a sequence whose mask holds its object, cropped to the object."""
    out = []
    for mask_file in sorted(annotations.glob("*.png")):
        image_file = frames / f"{mask_file.stem}.jpg"
        if not image_file.is_file():
            continue
        mask = np.asarray(Image.open(mask_file).convert("L")) > 0
        image = np.asarray(Image.open(image_file).convert("RGB"))
        if mask.sum() >= 64 and image.shape[:2] == mask.shape:
            out.append(Cutout.of(image, mask))
    return out


def _scaled(cutout: Cutout, scale: float) -> Cutout:
    h, w = cutout.alpha.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = np.asarray(Image.fromarray(cutout.image).resize(size, Image.BILINEAR))
    alpha = np.asarray(Image.fromarray((cutout.alpha * 255).astype(np.uint8)).resize(size, Image.BILINEAR)) / 255.0
    return Cutout(image, alpha)


def _schedule(rng: np.random.Generator, length: int) -> list[bool]:
    """Per frame: does the object walk (True) or pause? It starts walking."""
    moving, walking = [], True
    while len(moving) < length:
        span = rng.integers(*WALK) if walking else rng.integers(*PAUSE)
        moving += [walking] * int(span)
        walking = not walking
    return moving[:length]


def clip_frames(
    scene: np.ndarray, actor: list[Cutout], length: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image (H, W, 3) uint8 before JPEG, truth (H, W) uint8) per frame."""
    rng = np.random.default_rng(seed)
    height, width = scene.shape[:2]
    tallest = max(c.alpha.shape[0] for c in actor)
    scale = rng.uniform(*ACTOR_HEIGHT) * height / tallest
    stride = rng.uniform(*STRIDE) * height / 480 * rng.choice([-1, 1])
    widest = max(c.alpha.shape[1] for c in actor) * scale
    x = rng.uniform(0, max(1.0, width - widest))
    floor = rng.uniform(0.75, 0.98) * height  # where the object's lowest pixel stands
    phase = rng.uniform(0, 2 * np.pi)
    steps = 0  # frames walked so far: the pose plays the source forth and back as it walks
    for t, walking in enumerate(_schedule(rng, length)):
        if walking and t:
            steps += 1
            x += stride
            if x < 0 or x + widest > width:  # turn back at the frame's edges
                stride, x = -stride, min(max(x, 0.0), width - widest)
        cycle = 2 * len(actor) - 2
        pose = min(steps % cycle, cycle - steps % cycle)
        cutout = _scaled(actor[pose], scale)
        image = scene.astype(np.float32)
        truth = np.zeros((height, width), np.uint8)
        _paste(image, truth, cutout, round(floor) - cutout.alpha.shape[0], round(x))
        gain = 1 + DRIFT * np.sin(2 * np.pi * t / DRIFT_PERIOD + phase)
        image = image * gain + rng.normal(0, NOISE, image.shape)
        yield np.clip(image, 0, 255).round().astype(np.uint8), truth


def _paste(image: np.ndarray, truth: np.ndarray, cutout: Cutout, top: int, left: int) -> None:
    h, w = cutout.alpha.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, image.shape[0]), min(left + w, image.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    inner = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    alpha = cutout.alpha[inner][..., None]
    region = image[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = region * (1 - alpha) + cutout.image[inner] * alpha
    truth[y0:y1, x0:x1][cutout.alpha[inner] >= 0.5] = 1


def write_fixedcam(source: Path, out: Path, length: int = 60, seed: int = 0) -> list[str]:
    """One clip per sequence of ``source``: that sequence's object walking over the next
    sequence's first frame. Returns the clip names."""
    images, annotations = source / "JPEGImages", source / "Annotations"
    names = sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
    if len(names) < 2:
        raise VidsegError(f"{source} needs two sequences or more in DAVIS layout (JPEGImages/<seq>/, Annotations/<seq>/)")
    written = []
    for number, name in enumerate(names):
        actor = cutouts(images / name, annotations / name)
        scene_dir = images / names[(number + 1) % len(names)]
        scene_file = min(scene_dir.glob("*.jpg"), default=None)
        if len(actor) < 2 or scene_file is None:
            print(f"fixedcam: {name} left out (too few frames with its object)", file=sys.stderr)
            continue
        scene = np.asarray(Image.open(scene_file).convert("RGB"))
        clip = f"fixed-{name}"
        (out / "JPEGImages" / clip).mkdir(parents=True, exist_ok=True)
        (out / "Annotations" / clip).mkdir(parents=True, exist_ok=True)
        for t, (image, truth) in enumerate(clip_frames(scene, actor, length, seed * 1000 + number)):
            Image.fromarray(image).save(out / "JPEGImages" / clip / f"{t:05d}.jpg", quality=QUALITY)
            save_palette_png(truth, out / "Annotations" / clip / f"{t:05d}.png")
        written.append(clip)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a fixed-camera benchmark in DAVIS layout from a DAVIS-layout dataset.")
    parser.add_argument("source", type=Path, help="a dataset in DAVIS layout (its sequences give scenes and objects)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--frames", type=int, default=60, help="frames per clip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        clips = write_fixedcam(args.source, args.out, args.frames, args.seed)
    except VidsegError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{len(clips)} clips of {args.frames} frames", file=sys.stderr)
    print(args.out.resolve())


if __name__ == "__main__":
    main()
