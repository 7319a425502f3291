"""Video sinks: the lossless label video (FFV1 in .mkv) and the colour overlay (H.264), both
with the input's timestamps, written in chunks so that a resumed run goes on from the last
finished one."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from vidseg_cli.io.frames import Frame
from vidseg_cli.io.sink import Colours, Prediction, Sink, object_colours

LABEL_VIDEO = "labels.mkv"
OVERLAY_VIDEO = "overlay.mp4"


class _VideoSink(Sink):
    """Encodes frames with the input's timestamps (copied pts, same time base).

    The video is written in chunks, one per stretch between checkpoints, each a complete
    file; closing joins them by remuxing their packets (no re-encoding). A run that is
    killed and resumed therefore writes the same label video as one that never stopped:
    FFV1 is lossless and every chunk starts with a keyframe."""

    codec = ""
    pix_fmt = ""
    name = ""
    options: dict[str, str] = {}
    _input_format = "gray"  # the ndarray layout _image returns

    def __init__(self, folder: Path, time_base: Fraction) -> None:
        self.folder, self.time_base = folder, time_base
        self.chunks: list[str] = []  # finished chunk files, in order
        self.container: av.container.OutputContainer | None = None
        self.last_pts: int | None = None

    def _chunk_path(self, number: int) -> Path:
        stem, suffix = self.name.rsplit(".", 1)
        return self.folder / f".{stem}.{number:05d}.{suffix}"

    def _open_chunk(self) -> None:
        self.current = self._chunk_path(len(self.chunks))
        self.container = av.open(str(self.current), "w")
        self.stream = self.container.add_stream(self.codec)
        self.stream.pix_fmt = self.pix_fmt
        self.stream.options = dict(self.options)
        # Both must be set: the encoder otherwise rescales pts to its default rate,
        # which silently changes variable-frame-rate timing.
        self.stream.time_base = self.time_base
        self.stream.codec_context.time_base = self.time_base
        self.started = False

    def write(self, frame: Frame, prediction: Prediction) -> None:
        image = self._image(frame, prediction.labels)
        if self.container is None:
            self._open_chunk()
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

    def _finish_chunk(self) -> None:
        if self.container is None:
            return
        container, self.container = self.container, None
        if self.started:
            for packet in self.stream.encode():
                container.mux(packet)
        container.close()
        if self.started:
            self.chunks.append(self.current.name)

    def checkpoint(self) -> dict:
        self._finish_chunk()
        return {"chunks": list(self.chunks), "last_pts": self.last_pts}

    def resume(self, state: dict) -> None:
        self.chunks, self.last_pts = list(state["chunks"]), state["last_pts"]

    def abandon(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None

    def close(self) -> None:
        self._finish_chunk()
        self._chunk_path(len(self.chunks)).unlink(missing_ok=True)  # opened, never written
        target = self.folder / self.name
        paths = [self.folder / chunk for chunk in self.chunks]
        if len(paths) == 1:
            paths[0].replace(target)
        elif paths:
            _join(paths, target)
            for path in paths:
                path.unlink()

    @property
    def outputs(self) -> list[str]:
        return [self.name]

    def _image(self, frame: Frame, labels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _join(chunks: list[Path], target: Path) -> None:
    """One file from several, by copying their packets (timestamps are the input's)."""
    with av.open(str(target), "w") as out:
        with av.open(str(chunks[0])) as first:
            stream = out.add_stream_from_template(first.streams.video[0])
        for chunk in chunks:
            with av.open(str(chunk)) as source:
                for packet in source.demux(video=0):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    packet.stream = stream
                    out.mux(packet)


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

    def __init__(self, folder: Path, time_base: Fraction, colours: Colours | None = None) -> None:
        super().__init__(folder, time_base)
        self.colours = colours or object_colours()
        self._legend: np.ndarray | None = None

    def _image(self, frame: Frame, labels: np.ndarray) -> np.ndarray:
        colours = self.colours.palette[labels]
        mixed = frame.image * (1 - self.alpha) + colours * self.alpha
        if self.colours.background is not None:
            mixed = np.where(labels[..., None] != self.colours.background, mixed, frame.image)
        mixed = mixed.astype(np.uint8)
        if self.colours.legend:
            self._draw_legend(mixed)
        return _pad_even(mixed)

    def _draw_legend(self, image: np.ndarray) -> None:
        """The classes and their colours in the top-left corner (drawn once, pasted on each frame)."""
        if self._legend is None:
            self._legend = legend_image(self.colours.legend)
        h, w = self._legend.shape[:2]
        if 3 * w > image.shape[1] or h > image.shape[0]:
            return  # a legend that would hide the frame is worse than none (tiny videos)
        image[:h, :w] = self._legend


def legend_image(entries: tuple[tuple[str, tuple[int, int, int]], ...]) -> np.ndarray:
    """A small table of colour swatches and names, white on dark grey."""
    from PIL import ImageDraw

    row, swatch = 14, 10
    width = 8 + swatch + 6 + 7 * max(len(name) for name, _ in entries) + 8
    picture = Image.new("RGB", (width, 6 + row * len(entries)), (32, 32, 32))
    draw = ImageDraw.Draw(picture)
    for i, (name, colour) in enumerate(entries):
        top = 4 + i * row
        draw.rectangle([8, top + 1, 8 + swatch, top + 1 + swatch], fill=tuple(colour))
        draw.text((8 + swatch + 6, top), name, fill=(235, 235, 235))
    return np.asarray(picture)


def _pad_even(image: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row/column rather than crop."""
    h, w = image.shape[:2]
    return np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
