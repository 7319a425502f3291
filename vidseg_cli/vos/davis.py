"""Datasets in DAVIS layout: JPEGImages/<seq>/*.jpg and Annotations/<seq>/*.png.

Annotations are paired with frames by file name (``00010.png`` annotates ``00010.jpg``, or
frame number 10 when no frame has that name), never by position: YouTube-VOS-style data
annotates every fifth frame, and pairing by position would score frame 10's mask against
frame 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import FolderSource, natural_key
from vidseg_cli.io.images import is_listed_image, warn
from vidseg_cli.io.masks import MaskReader


@dataclass
class Sequence:
    name: str
    frames: Path
    truths: list[np.ndarray]  # per annotated frame (H, W) ids
    prompts: dict[int, np.ndarray]  # frame -> mask of the objects first seen there
    annotated: list[int] = field(default_factory=list)  # frame index of each truth
    frame_count: int = 0

    def __post_init__(self) -> None:
        if not self.annotated:  # every frame annotated, in order
            self.annotated = list(range(len(self.truths)))
        self.frame_count = self.frame_count or len(self.truths)

    @property
    def scored(self) -> list[int]:
        """The annotated frames J and F are computed on: all but the first and the last
        (the official DAVIS protocol, applied to the annotated frames)."""
        return self.annotated[1:-1]

    @property
    def objects(self) -> list[int]:
        return sorted({int(i) for m in self.prompts.values() for i in np.unique(m) if i})


def load_davis(root: Path) -> list[Sequence]:
    """Every sequence that can be scored; the others are left out with a warning."""
    images, annotations = root / "JPEGImages", root / "Annotations"
    if not images.is_dir() or not annotations.is_dir():
        raise VidsegError(f"{root} is not in DAVIS layout (JPEGImages/<seq>/, Annotations/<seq>/)")
    sequences = [_sequence(folder, annotations / folder.name) for folder in sorted(images.iterdir()) if folder.is_dir()]
    if not sequences:
        raise VidsegError(f"no sequences in {images}")
    scorable = [s for s in sequences if _scorable(s)]
    if not scorable:
        raise VidsegError(
            f"no sequence in {root} can be scored: each needs an object on an annotated frame and "
            "at least one annotated frame besides the first and the last"
        )
    return scorable


def _scorable(sequence: Sequence) -> bool:
    if not sequence.prompts:
        warn(f"sequence {sequence.name} left out: its annotations mark no object")
    elif not sequence.scored:
        warn(
            f"sequence {sequence.name} left out: {len(sequence.annotated)} annotated frame(s), none to score "
            "besides the first and the last"
        )
    else:
        return True
    return False


def _sequence(frames: Path, annotations: Path) -> Sequence:
    source = FolderSource(frames)
    reader = MaskReader(source.size, resize=True)
    files = sorted((f for f in annotations.glob("*.png") if is_listed_image(f)), key=natural_key) if annotations.is_dir() else []
    by_name = {file.stem: index for index, file in enumerate(source.files)}
    indexed = sorted((_frame_of(f, by_name, source.count), f) for f in files)
    annotated = [index for index, _ in indexed]
    truths = [reader.read(f, allow_empty=True) for _, f in indexed]
    prompts = {annotated[i]: mask for i, mask in first_appearances(truths).items()}
    return Sequence(frames.name, frames, truths, prompts, annotated, source.count)


def _frame_of(annotation: Path, by_name: dict[str, int], count: int) -> int:
    """The frame an annotation belongs to: the frame of the same name, else its number."""
    if annotation.stem in by_name:
        return by_name[annotation.stem]
    if annotation.stem.isdigit() and int(annotation.stem) < count:
        return int(annotation.stem)
    raise VidsegError(
        f"annotation {annotation} matches no frame: name it as its frame (00010.png for 00010.jpg) "
        f"or by a frame number below {count}"
    )


def first_appearances(truths: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Each object's mask on the first truth where it appears (DAVIS 2017 semi-supervised),
    keyed by the position in ``truths``."""
    seen: set[int] = set()
    prompts: dict[int, np.ndarray] = {}
    for index, truth in enumerate(truths):
        new = [int(i) for i in np.unique(truth) if i and int(i) not in seen]
        if new:
            prompts[index] = np.where(np.isin(truth, new), truth, 0).astype(np.uint8)
            seen.update(new)
    return prompts
