"""Frame sources: a video file (anything PyAV decodes) or a folder of images, streamed.

Frames carry their presentation timestamp so outputs keep the input's timing, also for
variable-frame-rate video (never index / fps). Rotation metadata is applied here, so
every later stage sees the frame upright.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.images import is_listed_image, load_image, to_rgb

FOLDER_TIME_BASE = Fraction(1, 25)  # image folders have no timing: 25 fps


@dataclass(frozen=True)
class Frame:
    index: int
    image: np.ndarray  # (H, W, 3) uint8 RGB, upright
    pts: int
    time_base: Fraction


class FrameSource:
    """Iterate frames; ``size`` is (height, width) after rotation; ``count`` may be None."""

    path: Path
    size: tuple[int, int]
    count: int | None
    time_base: Fraction

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder; safe to call twice."""


def open_frames(path: Path) -> FrameSource:
    """Open a video file or an image folder, or raise VidsegError saying why not."""
    if not path.exists():
        raise VidsegError(f"input not found: {path}")
    if path.is_dir():
        return FolderSource(path)
    return VideoSource(path)


def natural_key(path: Path) -> list:
    """Sort 'frame2' before 'frame10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class FolderSource(FrameSource):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.files = sorted((p for p in path.iterdir() if is_listed_image(p)), key=natural_key)
        except OSError as error:
            raise VidsegError(f"cannot list frames in folder {path}: {error.strerror}") from None
        if not self.files:
            raise VidsegError(f"no .jpg or .png frames in folder {path}")
        self.size = _read_image(self.files[0]).shape[:2]
        self.count = len(self.files)
        self.time_base = FOLDER_TIME_BASE

    def __iter__(self) -> Iterator[Frame]:
        for index, file in enumerate(self.files):
            image = _read_image(file)
            if image.shape[:2] != self.size:
                raise VidsegError(
                    f"frame {file.name} is {image.shape[1]}x{image.shape[0]}, "
                    f"the first frame is {self.size[1]}x{self.size[0]}"
                )
            yield Frame(index=index, image=image, pts=index, time_base=self.time_base)


def _read_image(path: Path) -> np.ndarray:
    image, _ = load_image(path, "frame")
    return to_rgb(image, path)


class VideoSource(FrameSource):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.container = av.open(str(path))
        except (av.FFmpegError, UnicodeDecodeError) as error:
            raise VidsegError(f"cannot read video {path} (0 frames read): {_reason(error)}") from None
        if not self.container.streams.video:
            self.container.close()
            raise VidsegError(f"no video stream in {path} (0 frames read)")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame + slice threads: ~2x faster decode
        self.time_base = self.stream.time_base or Fraction(1, 25)
        self.count = self.stream.frames or None
        self._first = self._decode_first()
        self.size = self._first.image.shape[:2]

    def _decode_first(self) -> Frame:
        self._frames = self._decode()
        try:
            return next(self._frames)
        except StopIteration:
            self.close()
            raise VidsegError(f"no frames could be decoded from {self.path} (0 frames read)") from None

    def __iter__(self) -> Iterator[Frame]:
        yield self._first
        yield from self._frames

    def _decode(self) -> Iterator[Frame]:
        index, first, last = 0, None, None
        try:
            for frame in self.container.decode(self.stream):
                pts = frame.pts if frame.pts is not None else index
                first = pts if first is None else first
                last = pts
                image = _upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                yield Frame(index=index, image=image, pts=pts, time_base=self.time_base)
                index += 1
        except av.FFmpegError as error:
            raise VidsegError(
                f"video {self.path} is corrupt after {index} frames: {_reason(error)}"
            ) from None
        if self.count and index < self.count:
            raise VidsegError(f"video {self.path} is truncated: decoded {index} of {self.count} frames")
        self._check_duration(index, first, last)

    def _check_duration(self, frames: int, first: int | None, last: int | None) -> None:
        """Containers without a frame count (Matroska, WebM) still declare a duration:
        a stream that stops well before it was cut short."""
        if self.count or frames < 2 or first is None or last is None or not self.container.duration:
            return
        step = (last - first) / (frames - 1)
        end = float((last + step) * self.time_base)
        declared = self.container.duration / av.time_base
        if end + 2 * float(step * self.time_base) < declared:
            raise VidsegError(
                f"video {self.path} is truncated: decoded {frames} frames, "
                f"{end:.2f} s of the declared {declared:.2f} s"
            )

    def close(self) -> None:
        self.container.close()


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Apply display-matrix rotation (degrees counter-clockwise, as FFmpeg reports it)."""
    turns = (round(rotation / 90)) % 4
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)
