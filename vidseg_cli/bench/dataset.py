"""Datasets in DAVIS layout: JPEGImages/<seq>/*.jpg and Annotations/<seq>/*.png."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import FolderSource, natural_key
from vidseg_cli.io.masks import MaskReader


@dataclass
class Sequence:
    name: str
    frames: Path
    truths: list[np.ndarray]  # per frame (H, W) ids
    prompts: dict[int, np.ndarray]  # frame -> mask of the objects first seen there

    @property
    def objects(self) -> list[int]:
        return sorted({int(i) for m in self.prompts.values() for i in np.unique(m) if i})


def load_davis(root: Path) -> list[Sequence]:
    images, annotations = root / "JPEGImages", root / "Annotations"
    if not images.is_dir() or not annotations.is_dir():
        raise VidsegError(f"{root} is not in DAVIS layout (JPEGImages/<seq>/, Annotations/<seq>/)")
    sequences = [_sequence(folder, annotations / folder.name) for folder in sorted(images.iterdir()) if folder.is_dir()]
    if not sequences:
        raise VidsegError(f"no sequences in {images}")
    return sequences


def _sequence(frames: Path, annotations: Path) -> Sequence:
    size = FolderSource(frames).size
    reader = MaskReader(size, resize=True)
    files = sorted(annotations.glob("*.png"), key=natural_key)
    truths = [reader.read(f, allow_empty=True) for f in files]
    return Sequence(frames.name, frames, truths, first_appearances(truths))


def first_appearances(truths: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Each object's mask on the frame where it first appears (DAVIS 2017 semi-supervised)."""
    seen: set[int] = set()
    prompts: dict[int, np.ndarray] = {}
    for index, truth in enumerate(truths):
        new = [int(i) for i in np.unique(truth) if i and int(i) not in seen]
        if new:
            prompts[index] = np.where(np.isin(truth, new), truth, 0).astype(np.uint8)
            seen.update(new)
    return prompts
