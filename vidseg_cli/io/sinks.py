"""Output sinks by format: palette PNG sequence, per-object soft mattes and COCO run-length
encoding here; the label and overlay videos in video_sinks.py; what every sink is in sink.py.

All sinks write into a staging folder; ``io.outputs.StagedOutput`` moves it into place only
when the whole run succeeded (and every file was closed without error), so a failed run
leaves nothing behind and an existing output is replaced only with --force.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from vidseg_cli.errors import OutputError, VidsegError, os_error_text
from vidseg_cli.io.frames import Frame
from vidseg_cli.io.palette import davis_palette
from vidseg_cli.io.sink import Colours, Prediction, Sink, object_colours
from vidseg_cli.io.video_sinks import LabelVideoSink, OverlaySink
from vidseg_cli.options import FORMATS

RLE_FILE = "rle.json"


class _ImageSequenceSink(Sink):
    """Files per frame: what a resumed run needs is how many frames were written."""

    count = 0

    def checkpoint(self) -> dict:
        return {"count": self.count}

    def resume(self, state: dict) -> None:
        self.count = state["count"]


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
