"""`vidseg predict`: the frames that come next, from the memory of the ones before."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import fix_threads, print_json, print_json_line, stderr, user_errors
from vidseg_cli.errors import VidsegError
from vidseg_cli.options import (
    DEFAULT_PREDICT_MODEL,
    PREDICT_FORMATS,
    MemoryOptions,
    PredictOptions,
)

PredictFormat = flags.choices("PredictFormat", PREDICT_FORMATS)


@user_errors
@flags.taking(flags.JobFlags)
def predict_command(
    input: Annotated[Path, typer.Argument(help="Video file or folder of frames.")],
    context: Annotated[int, typer.Option(metavar="M", help="Frames the model observes.")] = 10,
    frames: Annotated[int, typer.Option(metavar="N", help="Frames to predict.")] = 10,
    start: Annotated[Optional[int], typer.Option(metavar="T", help="Observe frames T .. T+M-1 (default: the last M frames).")] = None,
    model: Annotated[str, typer.Option(help="Predictor: a name from weights.toml or a .safetensors file from vidseg train predict.")] = DEFAULT_PREDICT_MODEL,
    memory: Annotated[flags.MemoryOrNone, typer.Option(help="Memory update policy; none: no memory.")] = flags.MemoryOrNone.stremn,
    slots: Annotated[int, typer.Option(help="Memory slots (stremn, fifo).")] = 5,
    update: flags.UpdateOption = flags.Update.C,
    format: Annotated[PredictFormat, typer.Option("--format", "-f", help="png: one PNG per predicted frame, named by its index; video: prediction.mp4 (observed frames framed green, predicted red); all: both.")] = PredictFormat.all,
    compare: Annotated[bool, typer.Option("--compare", help="Score the prediction against the true frames (needs --start) and write comparison.mp4 (truth | prediction | error).")] = False,
    stream: Annotated[bool, typer.Option("--stream", help="Predict every frame from the ones before it and print its error as JSON lines on stdout (anomaly detection); writes no files.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: INPUT_prediction beside the input).")] = None,
    job: flags.JobFlags = flags.JobFlags(),
) -> None:
    """Predict the frames that follow a video, from a memory of the frames before.

    Prints the output folder on stdout (or a JSON summary with --json; JSON lines with --stream).
    """
    if stream and job.json:
        raise VidsegError("--stream writes JSON lines on stdout already: drop --json")
    options = PredictOptions(
        input=input, out=out, context=context, frames=frames, start=start, model=model,
        memory=MemoryOptions(memory=memory.value, slots=slots, update=update.value),
        format=format.value, compare=compare, stream=stream, **job.job_options(),
    )
    fix_threads(job.threads)
    from vidseg_cli.predict import job as engine  # torch: imported when a command runs

    if stream:
        done = engine.stream(options, print_json_line)
        stderr.print(f"{done['predicted']} frames predicted in {done['seconds']:.1f} s", highlight=False)
        return
    summary = engine.predict(options)
    if job.json:
        print_json(engine.summary_dict(summary))
        return
    scores = summary.metrics["mean"] if summary.metrics else None
    stderr.print(
        f"observed frames {summary.context[0]}..{summary.context[1]}, predicted {summary.predicted[0]}..{summary.predicted[1]}"
        f" at {summary.size[1]}x{summary.size[0]}, {summary.fps:.1f} fps"
        + (
            f"; MSE {scores['mse']:.1f} (copying the last frame: {scores['copy_last_mse']:.1f}),"
            f" MAE {scores['mae']:.1f}, SSIM {scores['ssim']:.3f} per frame" if scores else ""
        ),
        highlight=False,
    )
    print(summary.output)
