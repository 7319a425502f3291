"""Where objects are: per-frame statistics and the events an annotator acts on.

Each frame gives, for every object seen so far, its area (pixels and share of the frame),
bounding box, centroid and confidence (the mean of its winning probability over its
pixels), and events:

* ``appeared``: the first frame the object is present;
* ``lost``: the first frame of a run of at least ``after`` frames in which the object is
  absent (below ``min_share`` of the frame); shorter gaps are flicker, not events;
* ``reappeared``: the first frame it is present again after being lost.

``lost`` is only known ``after - 1`` frames later, so records are held back that many
frames and the event is put on the frame where the object went missing: a stream of JSON
lines that is late by a few frames but never wrong about where.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidseg_cli.io.outputs import StagedFile
from vidseg_cli.io.sink import Prediction
from vidseg_cli.options import EventOptions, SegmentOptions


@dataclass
class _Track:
    state: str = "unseen"  # unseen, present, missing (a short gap), lost
    gap_start: int | None = None
    present_frames: int = 0
    lost_runs: list[list[int]] = field(default_factory=list)  # [first, last] absent frame of each lost run
    first_seen: int | None = None


class EventTracker:
    """Feed frames in order with ``observe``; take finished records from it and ``finish``."""

    def __init__(self, objects: tuple[int, ...], options: EventOptions = EventOptions()) -> None:
        self.objects, self.options = objects, options
        self.tracks = {object_id: _Track() for object_id in objects}
        self.pending: deque[dict] = deque()
        self.last_frame = -1

    def observe(self, frame: int, time: float, prediction: Prediction) -> list[dict]:
        """The frame's record goes in; the records that can no longer change come out."""
        labels = prediction.labels
        stats = {str(i): object_stats(labels, prediction, i) for i in self.objects}
        record = {"frame": frame, "time": time, "objects": stats, "events": []}
        self.pending.append(record)
        for object_id in self.objects:
            share = stats[str(object_id)]["share"]
            self._step(object_id, frame, record, share >= self.options.min_share and share > 0)
        self.last_frame = frame
        ready = []
        while len(self.pending) > self.options.after:
            ready.append(self.pending.popleft())
        return ready

    def finish(self) -> list[dict]:
        """The records still held back; closes open lost runs at the last frame."""
        for track in self.tracks.values():
            if track.state == "lost":
                track.lost_runs[-1][1] = self.last_frame
        ready = list(self.pending)
        self.pending.clear()
        return ready

    def _step(self, object_id: int, frame: int, record: dict, present: bool) -> None:
        track = self.tracks[object_id]
        if present:
            track.present_frames += 1
            if track.state == "unseen":
                track.first_seen = frame
                record["events"].append({"object": object_id, "event": "appeared"})
            elif track.state == "lost":
                track.lost_runs[-1][1] = frame - 1
                record["events"].append({"object": object_id, "event": "reappeared"})
            track.state, track.gap_start = "present", None
            return
        if track.state == "present":
            track.state, track.gap_start = "missing", frame
        if track.state == "missing" and frame - track.gap_start + 1 >= self.options.after:
            track.state = "lost"
            track.lost_runs.append([track.gap_start, frame])
            self._record_of(track.gap_start)["events"].append({"object": object_id, "event": "lost"})

    def _record_of(self, frame: int) -> dict:
        for record in self.pending:
            if record["frame"] == frame:
                return record
        raise AssertionError(f"frame {frame} left the buffer before its event was known")

    def summary(self) -> dict[str, dict]:
        """Per object: frames present, frames lost, and where (first and last lost frame)."""
        return {
            str(object_id): {
                "first_frame": track.first_seen,
                "frames_present": track.present_frames,
                "frames_lost": sum(last - first + 1 for first, last in track.lost_runs),
                "lost": [list(run) for run in track.lost_runs],
            }
            for object_id, track in self.tracks.items()
        }


def object_stats(labels: np.ndarray, prediction: Prediction, object_id: int) -> dict:
    """Area, share, bounding box [x, y, w, h], centroid [x, y] and confidence of one object."""
    inside = labels == object_id
    area = int(inside.sum())
    if area == 0:
        return {"area": 0, "share": 0.0, "bbox": None, "centroid": None, "confidence": None}
    ys, xs = np.nonzero(inside)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    confidence = None
    if prediction.probabilities is not None:
        confidence = round(float(prediction.probability(object_id)[inside].mean()) / 255.0, 4)
    return {
        "area": area,
        "share": round(area / labels.size, 6),
        "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
        "centroid": [round(float(xs.mean()), 2), round(float(ys.mean()), 2)],
        "confidence": confidence,
    }


class EventsOut:
    """Event records to a file (staged, resumable) or to the caller (``-``: stdout)."""

    def __init__(self, options: SegmentOptions, inputs: list[Path], callback: Callable[[dict], None] | None) -> None:
        self.callback, self.file, self.handle = callback, None, None
        if options.events not in (None, "-"):
            self.file = StagedFile(Path(options.events), force=options.force, inputs=inputs, resumable=True)
            self.handle = open(self.file.staging, "r+" if options.resume else "w")  # noqa: SIM115
            self.file.on_close(self.handle.close)

    def __call__(self, record: dict) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")
        elif self.callback is not None:
            self.callback(record)

    def checkpoint(self) -> int | None:
        if self.handle is None:
            return None
        self.handle.flush()
        os.fsync(self.handle.fileno())
        return self.handle.tell()

    def resume(self, offset: int | None) -> None:
        if self.handle is not None and offset is not None:
            self.handle.truncate(offset)
            self.handle.seek(offset)

    def commit(self) -> None:
        if self.file is not None:
            self.file.commit()

    def abort(self) -> None:
        if self.file is not None:
            self.file.abort()

    def keep(self) -> None:
        if self.file is not None:
            self.file.keep()
