"""Output sinks: palette PNG sequence, lossless label video, colour overlay video,
per-object soft mattes, and COCO run-length encoding.

All sinks write into a staging folder; ``io.outputs.StagedOutput`` moves it into place only
when the whole run succeeded (and every file was closed without error), so a failed run
leaves nothing behind and an existing output is replaced only with --force.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from PIL import Image

from vidseg_cli.errors import OutputError, VidsegError, os_error_text
from vidseg_cli.io.frames import Frame
from vidseg_cli.io.palette import davis_palette
from vidseg_cli.options import FORMATS

LABEL_VIDEO = "labels.mkv"
OVERLAY_VIDEO = "overlay.mp4"
RLE_FILE = "rle.json"


@dataclass(frozen=True)
class Prediction:
    """What a frame's sinks write: object ids, and (for mattes and confidences) each
    object's probability x 255, channels in the order of ``object_ids``."""

    labels: np.ndarray  # (H, W) uint8
    probabilities: np.ndarray | None = None  # (len(object_ids), H, W) uint8
    object_ids: tuple[int, ...] = ()

    def probability(self, object_id: int) -> np.ndarray:
        """(H, W) uint8; zeros for an object this frame's pass did not know yet."""
        if self.probabilities is None:
            raise ValueError("this prediction was made without probabilities")
        if object_id not in self.object_ids:
            return np.zeros(self.labels.shape, np.uint8)
        return self.probabilities[self.object_ids.index(object_id)]


class Sink:
    def write(self, frame: Frame, prediction: Prediction) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and finish the file."""

    def checkpoint(self) -> dict:
        """Make what is written so far durable; what a resumed run needs to go on."""
        return {}

    def resume(self, state: dict) -> None:
        """Go on from ``checkpoint``'s state (files written since then are rewritten)."""

    def abandon(self) -> None:
        """The run failed: release files without finishing them (a checkpoint may be kept)."""
        self.close()

    @property
    def outputs(self) -> list[str]:
        """Names of what this sink wrote, relative to the output folder."""
        raise NotImplementedError


class _ImageSequenceSink(Sink):
    """Files per frame: what a resumed run needs is how many frames were written."""

    count = 0

    def checkpoint(self) -> dict:
        return {"count": self.count}

    def resume(self, state: dict) -> None:
        self.count = state["count"]


@dataclass(frozen=True)
class Colours:
    """How label ids are drawn: the palette of the PNGs and overlays, the id an overlay
    leaves uncoloured (segment: 0, the background; semseg: None, every class is drawn),
    and a legend of (name, colour) drawn on the overlay."""

    palette: np.ndarray  # (256, 3) uint8
    background: int | None = 0
    legend: tuple[tuple[str, tuple[int, int, int]], ...] = ()


def object_colours() -> Colours:
    """segment's: the DAVIS palette, index = object id."""
    return Colours(davis_palette())


class PngSink(_ImageSequenceSink):
    """One palette PNG per frame, ``%05d.png``: index = object id (DAVIS layout) or class id."""

    def __init__(self, folder: Path, colours: Colours | None = None) -> None:
        self.folder = folder
        self.colours = colours or object_colours()
        self.count = 0

    def write(self, frame: Frame, prediction: Prediction) -> None:
        save_palette_png(prediction.labels, self.folder / f"{frame.index:05d}.png", self.colours.palette)
        self.count += 1

    @property
    def outputs(self) -> list[str]:
        return [f"{i:05d}.png" for i in range(self.count)]


def save_palette_png(labels: np.ndarray, path: Path | BinaryIO, palette: np.ndarray | None = None) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette((davis_palette() if palette is None else palette).tobytes())
    image.save(path, format="PNG", optimize=False, compress_level=1)


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


class AlphaSink(_ImageSequenceSink):
    """Per-object soft mattes for compositing: ``<id>/%05d.png``, 8-bit grey, 255 opaque.

    A matte is the object's probability against its strongest rival (the background or
    another object), p / (p + max rival): above one half exactly where the label map
    says the object is, so a matte thresholded at 0.5 equals the label PNGs, and soft
    where the model was unsure (edges, motion blur, hair)."""

    def __init__(self, folder: Path, objects: tuple[int, ...]) -> None:
        self.folder, self.objects = folder, objects
        self.count = 0
        for object_id in objects:
            (folder / str(object_id)).mkdir(exist_ok=True)  # exists when a run resumes

    def write(self, frame: Frame, prediction: Prediction) -> None:
        for object_id, matte in zip(self.objects, mattes(prediction, self.objects), strict=True):
            Image.fromarray(matte, mode="L").save(self.folder / str(object_id) / f"{frame.index:05d}.png", compress_level=1)
        self.count += 1

    @property
    def outputs(self) -> list[str]:
        return [f"{object_id}/{i:05d}.png" for object_id in self.objects for i in range(self.count)]


def mattes(prediction: Prediction, objects: tuple[int, ...]) -> list[np.ndarray]:
    """(H, W) uint8 matte per object: p / (p + strongest rival), quantised so that
    ``matte >= 128`` holds exactly where ``labels == object``."""
    known = prediction.probabilities.astype(np.float32) if prediction.probabilities is not None else None
    if known is None or not len(known):
        return [np.where(prediction.labels == object_id, 255, 0).astype(np.uint8) for object_id in objects]
    background = np.clip(255.0 - known.sum(axis=0), 0.0, None)
    out = []
    for object_id in objects:
        own = prediction.probability(object_id).astype(np.float32)
        rivals = [background] + [known[i] for i, other in enumerate(prediction.object_ids) if other != object_id]
        rival = np.maximum.reduce(rivals)
        soft = np.round(255.0 * own / np.maximum(own + rival, 1e-6))
        inside = prediction.labels == object_id
        out.append(np.where(inside, np.maximum(soft, 128), np.minimum(soft, 127)).astype(np.uint8))
    return out


class RleSink(Sink):
    """Every object on every frame as COCO run-length encoding (pycocotools' compressed
    ``counts``), in one JSON file written as the frames come:

    ``{"format": "coco-rle", "height", "width", "objects", "frames": [{"frame", "time",
    "objects": {"<id>": {"size": [H, W], "counts": "..."}}}]}``; an object absent from a
    frame is left out of that frame."""

    def __init__(self, folder: Path, objects: tuple[int, ...]) -> None:
        self.objects, self.path = objects, folder / RLE_FILE
        self.file = None  # opened by the first write, or by resume (which must not truncate it)
        self.first = True

    def _handle(self):
        if self.file is None:
            self.file = open(self.path, "w")  # noqa: SIM115 - closed by close()
        return self.file

    def checkpoint(self) -> dict:
        if self.file is None:
            return {"offset": 0, "first": True}
        self.file.flush()
        os.fsync(self.file.fileno())
        return {"offset": self.file.tell(), "first": self.first}

    def resume(self, state: dict) -> None:
        self.file = open(self.path, "r+" if self.path.exists() else "w")  # noqa: SIM115 - closed by close()
        self.file.truncate(state["offset"])
        self.file.seek(state["offset"])
        self.first = state["first"]

    def write(self, frame: Frame, prediction: Prediction) -> None:
        from pycocotools import mask as coco_mask  # compiled; loaded only for this format

        file = self._handle()
        if self.first:
            height, width = prediction.labels.shape
            header = {"format": "coco-rle", "height": height, "width": width, "objects": list(self.objects)}
            file.write(json.dumps(header)[:-1] + ', "frames": [\n')
        encoded = {}
        for object_id in self.objects:
            binary = np.asfortranarray(prediction.labels == object_id, dtype=np.uint8)
            if binary.any():
                rle = coco_mask.encode(binary)
                encoded[str(object_id)] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        record = {"frame": frame.index, "time": round(float(frame.pts * frame.time_base), 6), "objects": encoded}
        file.write(("" if self.first else ",\n") + json.dumps(record))
        self.first = False

    def abandon(self) -> None:
        if self.file is not None:
            self.file.close()

    def close(self) -> None:
        file = self._handle()
        if self.first:  # no frame: still a valid file
            file.truncate(0)
            file.write(json.dumps({"format": "coco-rle", "objects": list(self.objects), "frames": []}))
        else:
            file.write("\n]}\n")
        file.close()

    @property
    def outputs(self) -> list[str]:
        return [RLE_FILE]


SINKS = {"png": PngSink, "video": LabelVideoSink, "overlay": OverlaySink, "alpha": AlphaSink, "rle": RleSink}


def make_sinks(
    fmt: str, folder: Path, time_base: Fraction, objects: tuple[int, ...] = (), colours: Colours | None = None,
    every: tuple[str, ...] = tuple(SINKS),
) -> list[Sink]:
    """The sinks of ``fmt``; ``all`` is ``every`` (a task's own formats: semseg has no mattes)."""
    if fmt != "all" and fmt not in SINKS:
        raise VidsegError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    kinds = [SINKS[name] for name in (every if fmt == "all" else (fmt,))]
    made = []
    try:
        for kind in kinds:
            if kind is PngSink:
                made.append(kind(folder, colours))
            elif kind in (AlphaSink, RleSink):
                made.append(kind(folder, objects))
            elif kind is OverlaySink:
                made.append(kind(folder, time_base, colours))
            else:
                made.append(kind(folder, time_base))
    except OSError as error:
        for sink in made:
            with contextlib.suppress(Exception):
                sink.abandon()
        raise write_error(error) from None
    return made


def needs_probabilities(fmt: str) -> bool:
    return fmt in ("alpha", "all")


def write_error(error: OSError) -> OutputError:
    """``cannot write overlay.mp4: No space left on device``: the file by its published
    name (the staging folder is an implementation detail)."""
    name = Path(error.filename).name if error.filename else "the output"
    reason = error.strerror or os_error_text(error)
    return OutputError(f"cannot write {name}: {reason}; nothing was published")


@contextlib.contextmanager
def open_sinks(
    fmt: str, folder: Path, time_base: Fraction, objects: tuple[int, ...] = (), colours: Colours | None = None,
    every: tuple[str, ...] = tuple(SINKS),
) -> Iterator[list[Sink]]:
    """The sinks of a format, closed at the end. A failure to flush or close a file fails
    the run like a failed write: a video cut short by a full disk is never published.
    When the run already failed, closing is best effort and the first error stands."""
    sinks = make_sinks(fmt, folder, time_base, objects, colours, every)
    try:
        yield sinks
    except BaseException:
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.abandon()
        raise
    for sink in sinks:
        try:
            sink.close()
        except OSError as error:
            raise write_error(error) from None


def write_all(sinks: list[Sink], frame: Frame, prediction: Prediction) -> None:
    """One frame to every sink; a write error (disk full, file too large) is one line."""
    try:
        for sink in sinks:
            sink.write(frame, prediction)
    except OSError as error:
        raise write_error(error) from None
