"""Crash-safe long runs: the state of a segment run, saved atomically into its staging folder.

Every ``--checkpoint-every`` frames or ``--checkpoint-seconds`` seconds (60 by default) the
job saves the session (memory bank, objects, counters), the event tracker, what each sink
needs to go on (files written, finished video chunks, the RLE file's length) and the
frame to continue from. ``--resume`` loads it, checks that the options and the input are
the ones it was made with, skips the decoded frames up to it and goes on; the outputs
equal an uninterrupted run's (the label PNGs, the decoded label video, the RLE).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.masks import parse_mask_args
from vidseg_cli.io.outputs import run_fingerprint
from vidseg_cli.options import SegmentOptions

CHECKPOINT = ".checkpoint.pt"


class Mismatch(VidsegError):
    """--resume found another run's checkpoint: refused, and the checkpoint is kept."""


def fingerprint(options: SegmentOptions) -> str:
    """What must not change between a run and its resumption (or for a published output to
    count as this run's): the options that shape the result, the input and the masks."""
    masks = [mask.path for mask in parse_mask_args(options.masks)]
    return run_fingerprint(options, [Path(options.input), *masks])


def save(folder: Path, state: dict) -> None:
    """Atomically: a crash while saving leaves the previous checkpoint in place."""
    staging = folder / f"{CHECKPOINT}.partial"
    torch.save(state, staging)
    os.replace(staging, folder / CHECKPOINT)


def load(folder: Path, run: str) -> dict | None:
    """The checkpoint of this very run (``run``: its ``fingerprint``), or None when there is none."""
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=False)  # our own file, in our own staging folder
    except Exception as error:  # noqa: BLE001 - a damaged checkpoint: say so, start over
        raise VidsegError(f"the checkpoint {path} cannot be read ({type(error).__name__}); run without --resume") from None
    if state.get("fingerprint") != run:
        raise Mismatch(
            "the checkpoint was made with other options or another input; "
            "run the same command as before with --resume, or run without --resume to start over"
        )
    return state


def exists(folder: Path) -> bool:
    return (folder / CHECKPOINT).is_file()


def frame_of(folder: Path) -> int | None:
    """The frame a kept checkpoint goes on from, for the message that says so."""
    try:
        return int(torch.load(folder / CHECKPOINT, weights_only=False)["frames"])
    except Exception:  # noqa: BLE001 - only for a message
        return None


def remove(folder: Path) -> None:
    """A finished run publishes no checkpoint."""
    (folder / CHECKPOINT).unlink(missing_ok=True)


class Schedule:
    """When the next checkpoint is due: every N frames, or every S seconds."""

    def __init__(self, every_frames: int, every_seconds: float, clock) -> None:
        self.every_frames, self.every_seconds, self.clock = every_frames, every_seconds, clock
        self.last = clock()

    def due(self, frames_done: int) -> bool:
        if self.every_frames and frames_done % self.every_frames == 0:
            return True
        return bool(self.every_seconds) and self.clock() - self.last >= self.every_seconds

    def saved(self) -> None:
        self.last = self.clock()
