"""Both directions: which pass serves each object on each frame, and the backward pass over a disk cache.

A frame before the first masked frame can only be reached backwards; a frame between two
masked frames is reached by both passes. Each *object* is served by the nearer of the
passes that know it: forward from the last mask at or before the frame that names it,
backward from the next mask at or after it that names it (ties go forward). Propagation
error grows with the distance travelled, so the nearer pass is the better-informed one;
deciding per object, not per frame, matters when masks name different objects (objects
annotated as they enter): the backward pass from a later mask knows only the objects
that mask and the masks after it name, and a frame it served whole lost every other one.
An object only one pass knows comes from that pass. When a frame's objects come from
both passes, its labels come from their per-object probabilities, soft-aggregated as
within one pass (``fuse``); a frame all of whose objects come from one pass is that
pass's prediction, unchanged.

Video files decode forwards only, so the backward pass first streams frames 0 .. last
masked frame into a cache folder at the processing size (uint8, about 0.7 MB a frame at
360p), then walks it from the end, keeping the predictions the forward pass will need
(full-resolution labels and, for mattes, events and mixed frames, probabilities). Cache
files are deleted as the backward walk consumes them, predictions when the run ends: disk
use is bounded by the span before the last mask, and memory by one frame.
"""

from __future__ import annotations

import bisect
import functools
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import FrameSource
from vidseg_cli.io.masks import MaskReader
from vidseg_cli.io.sink import Prediction
from vidseg_cli.vos.aggregate import aggregate
from vidseg_cli.vos.session import (
    StepResult,
    VOSSession,
    argmax_channels,
    certain_where_given,
    keep_given_pixels,
)

FORWARD, BACKWARD = "forward", "backward"


def parse_ends(specs: Iterable[str]) -> dict[int, int]:
    """``--end ID:FRAME`` values -> {object id: the first frame it is gone from}."""
    ends: dict[int, int] = {}
    for spec in specs:
        object_id, _, frame = spec.partition(":")
        if not (object_id.isdigit() and frame.isdigit()) or not 1 <= int(object_id) <= 255:
            raise VidsegError(f"--end {spec}: give an object id and a frame, ID:FRAME (e.g. 2:120)")
        if int(object_id) in ends:
            raise VidsegError(f"--end {spec}: object {object_id} already ends on frame {ends[int(object_id)]}")
        ends[int(object_id)] = int(frame)
    return ends


class DirectionPlan:
    """Which pass serves each object on frame t, given the objects each mask names,
    ``--direction`` and ``--end`` (object -> the frame it is gone from: it stays out of the
    outputs from there until a later mask names it again)."""

    def __init__(self, direction: str, named: Mapping[int, Iterable[int]], ends: Mapping[int, int] | None = None) -> None:
        self.direction = direction
        self.ends = dict(ends or {})
        self.masked = sorted(named)
        self.named = {frame: frozenset(named[frame]) for frame in self.masked}
        self._frames_of: dict[int, list[int]] = {}  # object -> the masked frames naming it, in order
        for frame in self.masked:
            for object_id in sorted(self.named[frame]):
                self._frames_of.setdefault(object_id, []).append(frame)

    @property
    def objects(self) -> tuple[int, ...]:
        """Every object some mask names, in id order."""
        return tuple(sorted(self._frames_of))

    def serving(self, frame: int) -> dict[int, str]:
        """Object id -> ``forward`` or ``backward`` for every object some pass knows on this
        frame; an object no pass reaches here (before its first mask, going forward only)
        is absent."""
        serving = {}
        for object_id, frames in self._frames_of.items():
            if self._ended(object_id, frame, frames):
                continue
            nearer = self._nearer(frame, frames)
            if nearer is not None:
                serving[object_id] = nearer
        return serving

    def _nearer(self, frame: int, frames: list[int]) -> str | None:
        before = bisect.bisect_right(frames, frame)  # masks naming the object at or before this frame
        after = bisect.bisect_left(frames, frame)  # the first one at or after it
        forward = frame - frames[before - 1] if before and self.direction != BACKWARD else None
        backward = frames[after] - frame if after < len(frames) and self.direction != FORWARD else None
        if forward is None and backward is None:
            return None
        if backward is None or (forward is not None and forward <= backward):
            return FORWARD
        return BACKWARD

    def _ended(self, object_id: int, frame: int, frames: list[int]) -> bool:
        end = self.ends.get(object_id)
        return end is not None and end <= frame and not any(end <= named <= frame for named in frames)

    def backward_serves(self, frame: int) -> bool:
        return BACKWARD in self.serving(frame).values()

    @functools.cached_property
    def needs_backward(self) -> bool:
        return any(self.backward_serves(t) for t in range(self.masked[-1] + 1))

    @functools.cached_property
    def fuses(self) -> bool:
        """Some frame takes objects from both passes, or leaves an ended one out: its labels
        come from per-object probabilities, which the passes must then keep."""
        return bool(self.ends) or any(len(set(self.serving(t).values())) == 2 for t in range(self.masked[-1] + 1))

    def forward_runs(self, frame: int) -> bool:
        """The forward session steps every frame from the first mask on (its memory needs
        them all), unless the forward pass serves no frame at all."""
        return self.direction != BACKWARD and frame >= self.masked[0]


def prediction_of(result: StepResult) -> Prediction:
    return Prediction(result.labels, result.probabilities, result.object_ids)


def combine(
    serving: dict[int, str],
    forward: Prediction | None,
    backward: Prediction | None,
    shape: tuple[int, int],
    mask: np.ndarray | None = None,
) -> Prediction:
    """A frame's prediction from the passes that serve its objects (``serving``): one pass's
    own when it serves exactly the objects that pass knows, ``fuse`` when both passes serve
    or an ended object is left out, empty when no pass serves any."""
    passes = set(serving.values())
    if not passes:
        return Prediction(np.zeros(shape, np.uint8))
    only = forward if passes == {FORWARD} else backward if passes == {BACKWARD} else None
    if only is not None and set(only.object_ids) == set(serving):
        return only
    return fuse(serving, forward, backward, mask)


def fuse(serving: dict[int, str], forward: Prediction, backward: Prediction, mask: np.ndarray | None = None) -> Prediction:
    """Each object's probability from the pass that serves it, soft-aggregated against the
    others (as one pass aggregates its objects), labels by the largest. On a frame with a
    user mask its pixels stay exact, and the objects it names stay inside it."""
    object_ids = tuple(sorted(serving))
    chosen = [(forward if serving[i] == FORWARD else backward).probability(i) for i in object_ids]
    probabilities = torch.from_numpy(np.stack(chosen)).float() / 255
    distribution = aggregate(probabilities)  # (1 + objects, H, W), background first
    lut = np.array([0, *object_ids], dtype=np.uint8)
    labels = lut[argmax_channels(distribution).numpy()]
    soft = (distribution[1:] * 255).round().to(torch.uint8).numpy()
    if mask is not None:
        labels = keep_given_pixels(labels, mask)
        soft = certain_where_given(soft, labels, object_ids, mask)
    return Prediction(labels, soft, object_ids)


class BackwardPass:
    """Runs the backward session and hands its predictions to the forward writer."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def run(
        self,
        session: VOSSession,
        source: FrameSource,
        masks: dict[int, Path],
        reader: MaskReader,
        plan: DirectionPlan,
        record: Callable[[StepResult], None],
    ) -> None:
        """``record`` sees every step's result (memory size, progress)."""
        last = plan.masked[-1]
        self.cache.mkdir()
        size = self._cache_frames(session, source, last)
        for index in range(last, -1, -1):
            path = self.cache / f"frame-{index}.npy"
            image = np.load(path)
            path.unlink()
            mask = reader.read(masks[index]) if index in masks else None
            result = session.step(image, mask, output_size=size)
            if plan.backward_serves(index):
                self._keep(index, prediction_of(result))
            record(result)

    def _cache_frames(self, session: VOSSession, source: FrameSource, last: int) -> tuple[int, int]:
        seen = -1
        for frame in source:
            np.save(self.cache / f"frame-{frame.index}.npy", session.processing_image(frame.image))
            seen = frame.index
            if frame.index == last:
                return source.size
        raise VidsegError(f"a mask is for frame {last}, but the video has {seen + 1} frames")

    def _keep(self, index: int, prediction: Prediction) -> None:
        arrays = {"labels": prediction.labels, "object_ids": np.array(prediction.object_ids, dtype=np.int64)}
        if prediction.probabilities is not None:
            arrays["probabilities"] = prediction.probabilities
        np.savez(self.cache / f"prediction-{index}.npz", **arrays)

    def take(self, index: int) -> Prediction:
        """The kept prediction of a frame (the cache stays until the run ends: a resumed
        run may need the frames after its checkpoint again)."""
        with np.load(self.cache / f"prediction-{index}.npz") as stored:
            probabilities = stored["probabilities"] if "probabilities" in stored.files else None
            return Prediction(stored["labels"], probabilities, tuple(int(i) for i in stored["object_ids"]))

    def remove(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
