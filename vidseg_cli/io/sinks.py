"""Output sinks: palette PNG sequence, lossless label video, colour overlay video.

All sinks write into a staging folder; ``io.outputs.StagedOutput`` moves it into place only
when the whole run succeeded (and every file was closed without error), so a failed run
leaves nothing behind and an existing output is replaced only with --force.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from PIL import Image

from vidseg_cli.errors import OutputError, VidsegError, os_error_text
from vidseg_cli.io.frames import Frame
from vidseg_cli.io.palette import davis_palette

FORMATS = ("png", "video", "overlay", "all")
LABEL_VIDEO = "labels.mkv"
OVERLAY_VIDEO = "overlay.mp4"


class Sink:
    def write(self, frame: Frame, labels: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and finish the file."""

    @property
    def outputs(self) -> list[str]:
        """Names of what this sink wrote, relative to the output folder."""
        raise NotImplementedError


class PngSink(Sink):
    """One palette PNG per frame, ``%05d.png``: index = object id (DAVIS layout)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def write(self, frame: Frame, labels: np.ndarray) -> None:
        save_palette_png(labels, self.folder / f"{frame.index:05d}.png")
        self.count += 1

    @property
    def outputs(self) -> list[str]:
        return [f"{i:05d}.png" for i in range(self.count)]


def save_palette_png(labels: np.ndarray, path: Path | BinaryIO) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(davis_palette().tobytes())
    image.save(path, format="PNG", optimize=False, compress_level=1)


class _VideoSink(Sink):
    """Encodes frames with the input's timestamps (copied pts, same time base)."""

    codec = ""
    pix_fmt = ""
    name = ""
    options: dict[str, str] = {}
    _input_format = "gray"  # the ndarray layout _image returns

    def __init__(self, folder: Path, time_base: Fraction) -> None:
        self.container = av.open(str(folder / self.name), "w")
        self.stream = self.container.add_stream(self.codec)
        self.stream.pix_fmt = self.pix_fmt
        self.stream.options = dict(self.options)
        # Both must be set: the encoder otherwise rescales pts to its default rate,
        # which silently changes variable-frame-rate timing.
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        self.time_base = time_base
        self.started = False
        self.last_pts: int | None = None

    def write(self, frame: Frame, labels: np.ndarray) -> None:
        image = self._image(frame, labels)
        if not self.started:
            self.stream.height, self.stream.width = image.shape[:2]
            self.started = True
        video_frame = av.VideoFrame.from_ndarray(image, format=self._input_format)
        # Encoders need strictly increasing pts; duplicated timestamps do occur in the wild.
        pts = frame.pts if self.last_pts is None or frame.pts > self.last_pts else self.last_pts + 1
        video_frame.pts, video_frame.time_base = pts, self.time_base
        self.last_pts = pts
        for packet in self.stream.encode(video_frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.started:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()

    @property
    def outputs(self) -> list[str]:
        return [self.name]

    def _image(self, frame: Frame, labels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LabelVideoSink(_VideoSink):
    """FFV1 ``gray`` in Matroska: lossless, decoded pixel values equal the object ids."""

    codec, pix_fmt, name = "ffv1", "gray", LABEL_VIDEO

    def _image(self, frame: Frame, labels: np.ndarray) -> np.ndarray:
        return labels.astype(np.uint8)


class OverlaySink(_VideoSink):
    """H.264 colour overlay for viewing (lossy: never read labels back from it)."""

    codec, pix_fmt, name = "libx264", "yuv420p", OVERLAY_VIDEO
    options = {"crf": "20", "preset": "veryfast"}
    _input_format = "rgb24"
    alpha = 0.5

    def _image(self, frame: Frame, labels: np.ndarray) -> np.ndarray:
        colours = davis_palette()[labels]
        mixed = np.where(labels[..., None] > 0, frame.image * (1 - self.alpha) + colours * self.alpha, frame.image)
        return _pad_even(mixed.astype(np.uint8))


def _pad_even(image: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row/column rather than crop."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def make_sinks(fmt: str, folder: Path, time_base: Fraction) -> list[Sink]:
    kinds = {"png": [PngSink], "video": [LabelVideoSink], "overlay": [OverlaySink]}
    kinds["all"] = [PngSink, LabelVideoSink, OverlaySink]
    if fmt not in kinds:
        raise VidsegError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    try:
        return [kind(folder) if kind is PngSink else kind(folder, time_base) for kind in kinds[fmt]]
    except OSError as error:
        raise write_error(error) from None


def write_error(error: OSError) -> OutputError:
    """``cannot write overlay.mp4: No space left on device``: the file by its published
    name (the staging folder is an implementation detail)."""
    name = Path(error.filename).name if error.filename else "the output"
    reason = error.strerror or os_error_text(error)
    return OutputError(f"cannot write {name}: {reason}; nothing was published")


@contextlib.contextmanager
def open_sinks(fmt: str, folder: Path, time_base: Fraction) -> Iterator[list[Sink]]:
    """The sinks of a format, closed at the end. A failure to flush or close a file fails
    the run like a failed write: a video cut short by a full disk is never published.
    When the run already failed, closing is best effort and the first error stands."""
    sinks = make_sinks(fmt, folder, time_base)
    try:
        yield sinks
    except BaseException:
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.close()
        raise
    for sink in sinks:
        try:
            sink.close()
        except OSError as error:
            raise write_error(error) from None


def write_all(sinks: list[Sink], frame: Frame, labels: np.ndarray) -> None:
    """One frame to every sink; a write error (disk full, file too large) is one line."""
    try:
        for sink in sinks:
            sink.write(frame, labels)
    except OSError as error:
        raise write_error(error) from None
