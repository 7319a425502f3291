"""What the segment job checks before any work, so that bad input fails in one line before
a model is built or an output created."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidseg_cli.errors import VidsegError
from vidseg_cli.io.frames import FrameSource
from vidseg_cli.io.images import warn
from vidseg_cli.io.masks import MaskFile, MaskReader
from vidseg_cli.io.outputs import refuse_existing, resolve_output
from vidseg_cli.options import (
    DIRECTIONS,
    MAX_SIZE,
    MAX_SLOTS,
    MIN_SIZE,
    TTAS,
    MemoryOptions,
    ReuseOptions,
    SegmentOptions,
    SparseOptions,
    check_choice,
)
from vidseg_cli.vos.directions import parse_ends


def check_tta(tta: str, reuse: ReuseOptions, sparse: SparseOptions) -> None:
    check_choice("--tta", tta, TTAS)
    if tta != "none" and (reuse.enabled or sparse.enabled):
        raise VidsegError("--tta flip cannot be combined with --reuse or --sparse: they skip work, it doubles it")


def validate_memory(options: MemoryOptions, permanent: int) -> None:
    if options.update not in ("A", "B", "C", "D"):
        raise VidsegError(f"unknown --update {options.update!r}; choose A, B, C or D")
    if options.slots < 1 or options.every < 1 or options.write_every < 1:
        raise VidsegError("--slots, --every and --write-every must be at least 1")
    if options.slots > MAX_SLOTS:
        raise VidsegError(f"--slots {options.slots}: at most {MAX_SLOTS} memory slots")
    if options.memory == "stremn" and options.slots < permanent + 1:
        raise VidsegError(
            f"--slots {options.slots} leaves no room: {permanent} mask frame(s) are kept permanently, "
            f"so stremn needs at least {permanent + 1} slots"
        )


def validate_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise VidsegError(f"--size {size}: the processing size must be between {MIN_SIZE} and {MAX_SIZE} pixels")


def validate_direction(options: SegmentOptions) -> None:
    check_choice("--direction", options.direction, DIRECTIONS)
    event = options.event_options
    if event.after < 1 or not 0.0 <= event.min_share < 1.0:
        raise VidsegError("--lost-after must be at least 1 frame and --lost-below a share of the frame in [0, 1)")


def check_events_file(options: SegmentOptions, output: Path, inputs: list[Path]) -> None:
    """Before anything is created: the events file is no input, not inside the output
    folder (which the run replaces), and replaces an existing file only with --force."""
    if options.events in (None, "-"):
        return
    path = Path(options.events)
    resolved = resolve_output(path, inputs)
    if resolved == output or output in resolved.parents:
        raise VidsegError(f"--events {path} lies inside the output folder {output}: write it elsewhere")
    refuse_existing(resolved, options.force)


def say_renumbered(renumbered: dict[int, int]) -> None:
    if renumbered:
        pairs = ", ".join(f"{wide} -> {id_}" for wide, id_ in renumbered.items())
        warn(f"16-bit mask ids above 255 renumbered (the outputs use the new ids): {pairs}")


def check_masks(masks: list[MaskFile], reader: MaskReader, source: FrameSource) -> dict[int, set[int]]:
    """Fail before any work: unreadable, empty, wrongly sized or out-of-range masks.
    Returns the object ids each masked frame's mask names."""
    named: dict[int, set[int]] = {}
    for mask in masks:
        if source.count is not None and mask.frame >= source.count:
            raise VidsegError(
                f"mask {mask.path} is for frame {mask.frame}, but the video has {source.count} frames"
            )
        named[mask.frame] = {int(i) for i in np.unique(reader.read(mask.path)) if i}
    return named


def check_ends(specs: tuple[str, ...], named: dict[int, set[int]], source: FrameSource) -> dict[int, int]:
    """``--end ID:FRAME``: an object some mask names, ending after its first mask."""
    ends = parse_ends(specs)
    for object_id, end in ends.items():
        first = min((frame for frame, ids in named.items() if object_id in ids), default=None)
        if first is None:
            raise VidsegError(f"--end {object_id}:{end}: no mask names object {object_id}")
        if end <= first:
            raise VidsegError(
                f"--end {object_id}:{end}: object {object_id} is first named on frame {first}; it can only end after that"
            )
        if source.count is not None and end >= source.count:
            raise VidsegError(f"--end {object_id}:{end}: the video has {source.count} frames")
    return ends
