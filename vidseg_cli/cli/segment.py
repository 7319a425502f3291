"""`vidseg segment`: masks for every frame of a video from masks of some frames."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import fix_threads, print_json, print_json_line, progress_bar, stderr, user_errors
from vidseg_cli.errors import VidsegError
from vidseg_cli.options import (
    DEFAULT_SIZE,
    DEFAULT_VOS_MODEL,
    DIRECTIONS,
    FORMATS,
    SPARSE_MODES,
    TTAS,
    EventOptions,
    MemoryOptions,
    ReuseOptions,
    SegmentOptions,
    SparseOptions,
)


class Memory(str, enum.Enum):
    stremn = "stremn"
    stm = "stm"
    first_last = "first-last"
    fifo = "fifo"


SparseMode = flags.choices("SparseMode", SPARSE_MODES)


Tta = flags.choices("Tta", TTAS)


Format = flags.choices("Format", FORMATS)


Direction = flags.choices("Direction", DIRECTIONS)


@user_errors
def segment_command(
    input: Annotated[Path, typer.Argument(help="Video file (mp4, mkv, mov, webm, avi...) or folder of frames.")],
    mask: Annotated[
        list[str],
        typer.Option(
            "--mask", "-m", metavar="PNG|N:PNG|DIR",
            help="PNG (frame 0), N:PNG (frame N) or DIR (files named by frame index). Repeatable.",
        ),
    ],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: INPUT_masks beside the input).")] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="png: palette PNG per frame; video: lossless FFV1 label video; overlay: colour mp4; alpha: soft matte per object (<id>/%05d.png); rle: COCO run-length JSON; all: every one.")] = Format.png,
    force: flags.ForceOption = False,
    resize_mask: Annotated[bool, typer.Option("--resize-mask", help="Resize masks whose size differs from the frames (nearest).")] = False,
    memory: Annotated[Memory, typer.Option(help="Memory update policy.")] = Memory.stremn,
    slots: Annotated[int, typer.Option(help="Memory slots (stremn, fifo).")] = 5,
    update: flags.UpdateOption = flags.Update.C,
    every: Annotated[int, typer.Option(help="stm: keep every N-th frame.")] = 5,
    model: Annotated[str, typer.Option(help="VOS model: a name from weights.toml or a .safetensors file from vidseg train.")] = DEFAULT_VOS_MODEL,
    size: Annotated[int, typer.Option(help="Internal processing size (short side, pixels). Outputs keep the input size.")] = DEFAULT_SIZE,
    device: flags.DeviceOption = flags.Device.auto,
    threads: flags.ThreadsOption = None,
    reuse: Annotated[float, typer.Option(metavar="TAU", help="Reuse-VOS's frame gate: a frame whose P_gate (the chance that the last mask still holds) reaches TAU keeps it, and nothing runs (1: never).")] = 1.0,
    gates: Annotated[Optional[str], typer.Option(metavar="NAME|FILE", help="Region gates for --reuse and --sparse: a weights.toml name, a file from vidseg train gates, or 'fixed' (--sparse only: the change test's fixed threshold). Default: MODEL-gates.")] = None,
    sparse: Annotated[SparseMode, typer.Option(help="Compute only where it matters, per 16x16 cell (SpVOS's modes): static computes near the objects and skips the rest; residual computes where the frame changed and reuses the rest; triple computes where it changed near the objects, reuses where it did not and skips far from them. A frame with nothing to compute runs nothing.")] = SparseMode.none,
    write_every: Annotated[Optional[int], typer.Option(metavar="N", help="Write a frame to memory every N frames (default: 1).")] = None,
    tta: Annotated[Tta, typer.Option(help="Test-time augmentation: flip also segments the mirrored video (with its own memory) and averages the two; about half the speed.")] = Tta.none,
    direction: Annotated[Direction, typer.Option(help="forward: from each mask on; backward: from each mask back; both: each object from the nearer mask that names it.")] = Direction.both,
    end: Annotated[Optional[list[str]], typer.Option("--end", metavar="ID:FRAME", help="Object ID is gone from FRAME on (a later mask that leaves an object out does not end it), until a later mask names it again. Repeatable.")] = None,
    runtime: Annotated[flags.Runtime, typer.Option(help=f'What runs the backbone: torch; onnx (ONNX Runtime on the CPU, faster; {flags.install_hint("onnx")}); onnx-int8 (8-bit weights and activations: faster still, slightly less accurate); auto: onnx on a CPU where ONNX Runtime is installed, else torch. ONNX graphs are made once per model and size, and cached.')] = flags.Runtime.auto,
    events: Annotated[Optional[str], typer.Option(metavar="FILE|-", help="Per-frame objects (area, box, centroid, confidence) and events (appeared, lost, reappeared) as JSON lines, to FILE or stdout.")] = None,
    lost_after: Annotated[int, typer.Option(metavar="N", min=1, help="Events: an object absent for N frames is lost.")] = EventOptions.after,
    lost_below: Annotated[float, typer.Option(metavar="SHARE", min=0.0, max=0.99, help="Events: an object below this share of the frame counts as absent.")] = EventOptions.min_share,
    resume: Annotated[bool, typer.Option("--resume", help="Go on from the checkpoint an interrupted run of the same command left (in the output's hidden .NAME.partial folder); an output it already published is left as it is (one line, exit 0).")] = False,
    checkpoint_every: Annotated[int, typer.Option(metavar="N", min=0, help="Checkpoint every N frames (0: by time only).")] = 0,
    checkpoint_seconds: Annotated[float, typer.Option(metavar="S", min=0.0, help="Checkpoint every S seconds (0: by frames only).")] = 60.0,
    json: flags.JsonOption = False,
) -> None:
    """Segment objects through a video from their masks on some frames.

    Prints the output folder on stdout (or a JSON summary with --json).
    """
    if events == "-" and json:
        raise VidsegError("--events - and --json both write to stdout: give --events a FILE")
    options = SegmentOptions(
        input=input,
        masks=mask,
        out=out,
        format=format.value,
        force=force,
        resize_mask=resize_mask,
        model=model,
        size=size,
        device=device.value,
        memory=MemoryOptions(
            memory=memory.value, slots=slots, update=update.value, every=every,
            write_every=write_every or 1,
        ),
        reuse=ReuseOptions(tau=reuse),
        gates=gates,
        sparse=SparseOptions(sparse.value),
        tta=tta.value,
        runtime=runtime.value,
        direction=direction.value,
        ends=tuple(end or ()),
        events=events,
        event_options=EventOptions(after=lost_after, min_share=lost_below),
        resume=resume,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
    )
    fix_threads(threads)
    from vidseg_cli.vos.segment import segment  # torch: imported when a command runs

    with progress_bar("segmenting") as advance:
        summary = segment(options, advance, events=print_json_line if events == "-" else None)
    if json:
        print_json(summary)
    else:
        stderr.print(
            f"{summary.frames} frames{f' ({summary.reused_frames} reused: nothing ran)' if reuse < 1 or sparse.value != 'none' else ''}"
            f"{f' ({summary.computed_share:.0%} of the frame area computed afresh)' if summary.computed_share is not None else ''}, "
            f"objects {summary.objects}, {summary.fps:.2f} fps, "
            f"peak memory {summary.peak_rss_mb:.0f} MB",
            highlight=False,
        )
        if events == "-":  # stdout carries the event lines
            stderr.print(f"output: {summary.output}", highlight=False)
        else:
            print(summary.output)
