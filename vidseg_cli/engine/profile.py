"""Where a frame's time goes: per-stage timers for `vidseg bench --profile`.

Stages are marked where the work is (``with stage("trunk"): ...``) and cost nothing unless
a ``Profile`` is recording: then each stage's seconds are summed per frame, and the bench
closes each frame with ``Profile.end_frame``. A stage that runs twice in a frame (the
mirrored pass of --tta) counts twice. Whatever a frame spent outside the marked stages is
its ``other``, so the stages add up to the frame.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np

# a frame's path, for the order of reports; a stage not named here follows them, "other" last
PIPELINE = ("decode", "resize", "trunk", "memory read", "decoder", "memory write", "upsample", "encode")
_recording: Profile | None = None


class Profile:
    """Per-stage seconds of each frame, in the order stages were first met."""

    def __init__(self) -> None:
        self.frames: list[dict[str, float]] = []
        self._current: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self._current[name] = self._current.get(name, 0.0) + seconds

    def end_frame(self, total: float) -> None:
        """Close a frame that took ``total`` seconds end to end."""
        self._current["other"] = max(0.0, total - sum(self._current.values()))
        self.frames.append(self._current)
        self._current = {}

    def summary(self) -> dict[str, dict[str, float]]:
        """Per stage: median and p90 milliseconds per frame (0 on frames it did not run)."""
        names = list(dict.fromkeys(name for frame in self.frames for name in frame))
        names.sort(key=lambda name: (name == "other", PIPELINE.index(name) if name in PIPELINE else len(PIPELINE)))
        out = {}
        for name in names:
            ms = 1000 * np.array([frame.get(name, 0.0) for frame in self.frames])
            out[name] = {"median_ms": round(float(np.median(ms)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2)}
        return out


@contextlib.contextmanager
def recording(profile: Profile | None) -> Iterator[Profile | None]:
    """Record stages into ``profile`` while the block runs (None: record nothing)."""
    global _recording
    if profile is None:
        yield None
        return
    previous, _recording = _recording, profile
    try:
        yield profile
    finally:
        _recording = previous


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage ``name`` when a profile is recording; else nothing."""
    profile = _recording
    if profile is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        profile.add(name, time.perf_counter() - start)
