"""`vidseg semseg`: a class for every pixel of every frame, steadied by a memory of the past."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import fix_threads, print_json, progress_bar, stderr, user_errors
from vidseg_cli.options import (
    DEFAULT_SEMSEG_MODEL,
    SEMSEG_FORMATS,
    SEMSEG_READS,
    MemoryOptions,
    SemsegOptions,
)

Read = flags.choices("Read", SEMSEG_READS)
SemsegFormat = flags.choices("SemsegFormat", SEMSEG_FORMATS)


@user_errors
@flags.taking(flags.JobFlags)
def semseg_command(
    input: Annotated[Path, typer.Argument(help="Video file or folder of frames.")],
    model: Annotated[str, typer.Option(help="Semseg model: a name from weights.toml or a .safetensors file from vidseg train semseg.")] = DEFAULT_SEMSEG_MODEL,
    memory: Annotated[flags.MemoryOrNone, typer.Option(help="Memory update policy: none (the default) labels each frame alone; fifo reads the labels of the last --slots frames, moved to where their pixels went and mixed in by a learned gate: steadier labels on video at full frame rate, and a blurred or covered frame labelled from memory (+14 mIoU on such frames of CamVid val), 15% slower; on frames 1 s apart it costs semseg-camvid 2.7 mIoU.")] = flags.MemoryOrNone.none,
    slots: Annotated[int, typer.Option(help="Memory slots: 1 (the default) is the frame before, which holds what the frames before it carried.")] = 1,
    update: flags.UpdateOption = flags.Update.C,
    read: Annotated[Optional[Read], typer.Option(help="How the memory's labels are moved to this frame: local (LMANet, a window around each position) or global (TMANet); default: the model's.")] = None,
    radius: Annotated[Optional[int], typer.Option(metavar="R", help="Local read radius in stride-8 positions (default: the model's).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Internal processing size (short side, pixels; default: the model's, 480 for semseg-camvid, 360 for a model file). Outputs keep the input size.")] = None,
    runtime: Annotated[flags.Runtime, typer.Option(help=f'What runs the backbone: torch; onnx (ONNX Runtime on the CPU, faster; {flags.install_hint("onnx")}); onnx-int8 (8-bit weights and activations: faster, not measured for semseg accuracy); auto: onnx on a CPU where ONNX Runtime is installed, else torch. ONNX graphs are made once per model and size, and cached.')] = flags.Runtime.auto,
    format: Annotated[SemsegFormat, typer.Option("--format", "-f", help="png: palette PNG per frame (index = class id, the model's class colours); video: lossless FFV1 label video; overlay: colour mp4 with a legend; rle: rle.json, every class on every frame in COCO run-length encoding, keyed by class id; all: every one.")] = SemsegFormat.png,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: INPUT_semseg beside the input).")] = None,
    job: flags.JobFlags = flags.JobFlags(),
) -> None:
    """Label every pixel of every frame with a class, each frame reading a memory of the frames before.

    Writes classes.json (id, name, colour) beside the labels; prints the output folder on
    stdout (or a JSON summary with --json).
    """
    options = SemsegOptions(
        input=input, out=out, model=model, memory=MemoryOptions(memory=memory.value, slots=slots, update=update.value),
        read=read.value if read else None, radius=radius, size=size, runtime=runtime.value, format=format.value, **job.job_options(),
    )
    fix_threads(job.threads)
    from vidseg_cli.semseg.job import semseg  # torch: imported when a command runs

    with progress_bar("labelling") as advance:
        summary = semseg(options, advance)
    if job.json:
        print_json(dataclasses.asdict(summary))
        return
    top = sorted(summary.class_share.items(), key=lambda item: -item[1])[:3]
    stderr.print(
        f"{summary.frames} frames, {summary.fps:.2f} fps, peak memory {summary.peak_rss_mb:.0f} MB; "
        + ", ".join(f"{name} {share:.0%}" for name, share in top),
        highlight=False,
    )
    print(summary.output)
