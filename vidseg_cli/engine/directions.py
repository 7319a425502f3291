"""Both directions: which pass serves each frame, and the backward pass over a disk cache.

A frame before the first masked frame can only be reached backwards; a frame between two
masked frames is reached by both passes, and takes the one from the *nearer* mask (ties
go forward). Propagation error grows with the distance travelled, and averaging two
passes that disagree blurs the object where one of them is right; the nearer pass is the
better-informed one.

Video files decode forwards only, so the backward pass first streams frames 0 .. last
masked frame into a cache folder at the processing size (uint8, about 0.7 MB a frame at
360p), then walks it from the end, keeping the predictions the forward pass will need
(full-resolution labels and, for mattes and events, probabilities). Cache files are
deleted as the backward walk consumes them, predictions when the run ends: disk use is
bounded by the span before the last mask, and memory by one frame.
"""

from __future__ import annotations

import bisect
import functools
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vidseg_cli.engine.session import StepResult, VOSSession
from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import FrameSource
from vidseg_cli.io.masks import MaskReader
from vidseg_cli.io.sinks import Prediction

FORWARD, BACKWARD = "forward", "backward"


class DirectionPlan:
    """Which pass serves frame t, given the masked frames and ``--direction``."""

    def __init__(self, direction: str, masked: list[int]) -> None:
        self.direction, self.masked = direction, sorted(masked)

    def serves(self, frame: int) -> str | None:
        """``forward``, ``backward`` or None (no pass reaches it: stays empty)."""
        before = bisect.bisect_right(self.masked, frame)  # masks at or before this frame
        previous = self.masked[before - 1] if before else None
        following = self.masked[bisect.bisect_left(self.masked, frame)] if frame <= self.masked[-1] else None
        forward = previous if self.direction in (FORWARD, "both") else None
        backward = following if self.direction in (BACKWARD, "both") else None
        if forward is None and backward is None:
            return None
        if backward is None:
            return FORWARD
        if forward is None:
            return BACKWARD
        return FORWARD if frame - forward <= backward - frame else BACKWARD

    @functools.cached_property
    def needs_backward(self) -> bool:
        return any(self.serves(t) == BACKWARD for t in range(self.masked[-1] + 1))

    def forward_runs(self, frame: int) -> bool:
        """The forward session steps every frame from the first mask on (its memory needs
        them all), unless the forward pass serves no frame at all."""
        return self.direction != BACKWARD and frame >= self.masked[0]


def prediction_of(result: StepResult) -> Prediction:
    return Prediction(result.labels, result.probabilities, result.object_ids)


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
            if plan.serves(index) == BACKWARD:
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
