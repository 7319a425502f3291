"""Training clips for the predictor: Moving MNIST generated on the fly, or windows of the
user's own videos.

A source gives batches of clips as uint8 arrays (B, T, C, H, W) and a fixed set of
validation clips; the trainer does not know which source it has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import natural_key, open_frames
from vidseg_cli.io.images import is_listed_image
from vidseg_cli.predict.data import CANVAS, FRAMES, load_digits, sequence, sequences

VAL_SEED = 1  # validation clips: their own seed (for Moving MNIST, from *training* digits)
PATCH = 4  # frame sides are multiples of the predictor's patch


class ClipSource(Protocol):
    channels: int
    height: int
    width: int

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray: ...

    def validation(self, count: int) -> Iterator[np.ndarray]: ...


class MovingMnist:
    """Sequences of two of the 4,000 training digits; the test digits are never touched."""

    channels, height, width = 1, CANVAS, CANVAS

    def __init__(self, digits_file: Path) -> None:
        self.digits, _ = load_digits(digits_file)

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return np.stack([sequence(rng, self.digits) for _ in range(count)])[:, :, None]

    def validation(self, count: int) -> Iterator[np.ndarray]:
        return (clip[:, None] for clip in sequences(self.digits, VAL_SEED, count))


class VideoClips:
    """Random windows of FRAMES consecutive frames from one video file, or from every video
    (or frame folder) in a folder, decoded once at a fixed size and colour mode, flipped
    left-right at random. ``flag`` names the option in errors (--data, --val)."""

    def __init__(self, path: Path, size: int, channels: int, flag: str = "--data") -> None:
        self.channels = channels
        videos = _videos_in(path, flag)
        self.height, self.width = _frame_size(videos[0], size)
        self.videos = [v for v in (self._decode(video) for video in videos) if len(v) >= FRAMES]
        if not self.videos:
            raise VidsegError(f"{flag} {path}: no video has the {FRAMES} frames a training clip needs")
        self.starts = np.array([len(v) - FRAMES + 1 for v in self.videos])  # windows per video

    def _decode(self, path: Path) -> np.ndarray:
        mode = "L" if self.channels == 1 else "RGB"
        source = open_frames(path)
        try:
            frames = [
                np.asarray(Image.fromarray(f.image).convert(mode).resize((self.width, self.height), Image.Resampling.BILINEAR))
                for f in source
            ]
        finally:
            source.close()
        return np.stack(frames).reshape(len(frames), self.height, self.width, -1).transpose(0, 3, 1, 2)

    def _window(self, rng: np.random.Generator) -> np.ndarray:
        video = rng.choice(len(self.videos), p=self.starts / self.starts.sum())
        start = rng.integers(self.starts[video])
        return self.videos[video][start : start + FRAMES]

    def sample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        clips = np.stack([self._window(rng) for _ in range(count)])
        flip = rng.random(count) < 0.5
        clips[flip] = clips[flip][..., ::-1]
        return clips

    def windows(self) -> Iterator[np.ndarray]:
        """Every window of FRAMES frames that does not overlap the one before, video by video
        from each one's start, unflipped: a fixed test set."""
        for video in self.videos:
            for start in range(0, len(video) - FRAMES + 1, FRAMES):
                yield video[start : start + FRAMES]

    def validation(self, count: int) -> Iterator[np.ndarray]:
        """Fixed windows of the same videos: a check on fitting, not a held-out score
        (give --val PATH for that)."""
        rng = np.random.default_rng(VAL_SEED)
        return (self._window(rng) for _ in range(count))


def _videos_in(path: Path, flag: str) -> list[Path]:
    """A video file alone, or the videos and frame folders in a folder (an image file or a
    folder of images alone is refused: one frame folder is a video, give its parent)."""
    if path.is_file() and not is_listed_image(path):
        return [path]
    if not path.is_dir():
        raise VidsegError(f"{flag} {path}: not a video, nor a folder of videos or frame folders")
    inputs = sorted((p for p in path.iterdir() if not p.name.startswith(".")), key=natural_key)
    videos = [p for p in inputs if p.is_dir() or not is_listed_image(p)]
    if not videos:
        raise VidsegError(f"{flag} {path}: no videos or frame folders in it")
    return videos


def _frame_size(first: Path, size: int) -> tuple[int, int]:
    """Short side ``size``, the long side from the first video's aspect; both multiples of
    the patch (every video is brought to this size)."""
    source = open_frames(first)
    try:
        height, width = source.size
    finally:
        source.close()
    scale = size / min(height, width)
    def side(x: float) -> int:
        return max(PATCH, round(x * scale / PATCH) * PATCH)

    return side(height), side(width)
