"""`vidseg bench`: accuracy and speed of configurations, side by side."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import user_errors
from vidseg_cli.errors import VidsegError
from vidseg_cli.options import (
    DEFAULT_PREDICT_MODEL,
    DEFAULT_SEMSEG_MODEL,
    DEFAULT_SIZE,
    DEFAULT_VOS_MODEL,
    LONG_HEIGHT,
)


class Task(str, enum.Enum):
    vos = "vos"
    semseg = "semseg"
    predict = "predict"


@user_errors
def bench_command(
    task: Annotated[Task, typer.Option(help="vos: video object segmentation (DAVIS J&F); semseg: semantic segmentation (CamVid mIoU); predict: video prediction (Moving MNIST MSE, MAE, SSIM, PSNR).")] = Task.vos,
    data: Annotated[Path | None, typer.Option(help="vos: a dataset in DAVIS layout; semseg: labelled video in CamVid's layout (or images/, labels/); predict: MNIST digits (mnist_5k.csv.gz) for the held-out test set, or a video or folder of videos cut into windows of 20 frames (vos, predict: default a built-in synthetic one).")] = None,
    split: Annotated[str, typer.Option(help="semseg: comma list of splits of a CamVid layout, each scored (tune on val; test is for reported tables).")] = "val",
    corrupt: Annotated[bool, typer.Option("--corrupt", help="semseg: also score each split with every third frame degraded (blur, noise, occluder, glare; seed 0), on those frames.")] = False,
    far: Annotated[int | None, typer.Option(metavar="N", min=2, help="semseg: also score each split whose labelled frames are nearer, its frames dealt into clips of frames N video frames apart (CamVid: 30 is 1 s): what the memory costs when the scene has moved on.")] = None,
    read: Annotated[str | None, typer.Option(help="semseg: comma list of memory reads: local, global (default: the model's).")] = None,
    radius: Annotated[str | None, typer.Option(help="semseg: comma list of local read radii (default: the model's).")] = None,
    consistency: Annotated[Path | None, typer.Option(metavar="PATH", help="semseg: also measure temporal consistency (the share of pixels agreeing with the previous frame's labels moved by optical flow) on unlabelled video: a file, a frame folder, or a folder of either.")] = None,
    sequences: Annotated[str | None, typer.Option(help="Comma list of sequence names to run (vos).")] = None,
    limit: Annotated[int | None, typer.Option(metavar="N", min=1, help="predict: the first N test sequences (of Moving MNIST's 10,000, or of the videos' windows).")] = None,
    timed: Annotated[int, typer.Option(metavar="N", min=1, help="predict: sequences timed at batch 1 for FPS and latency.")] = 20,
    model: Annotated[str | None, typer.Option(help=f"Comma list of models (default: {DEFAULT_VOS_MODEL}; semseg: {DEFAULT_SEMSEG_MODEL}; predict: {DEFAULT_PREDICT_MODEL}).")] = None,
    size: Annotated[str | None, typer.Option(help=f"Comma list of internal sizes (default: {DEFAULT_SIZE}; with --long, {LONG_HEIGHT}).")] = None,
    memory: Annotated[str | None, typer.Option(help="Comma list of memory policies (default: stremn; with --long, all).")] = None,
    slots: Annotated[str | None, typer.Option(help="Comma list of slot counts (default: 5; semseg: 1).")] = None,
    update: Annotated[str, typer.Option(help="Comma list of stremn update rules.")] = "C",
    every: Annotated[str, typer.Option(help="Comma list of stm intervals.")] = "5",
    fusion: Annotated[str, typer.Option(help="Comma list of stremn fusion cells: model (the model's own), training-free, none.")] = "model",
    device: flags.DeviceOption = flags.Device.auto,
    json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON on stdout.")] = False,
    report: Annotated[Path | None, typer.Option(metavar="FILE.json", help="Write the full report as JSON to FILE.")] = None,
    csv_path: Annotated[str | None, typer.Option("--csv", metavar="FILE|-", help="Write one CSV row per configuration to FILE ('-' for stdout).")] = None,
    plot: Annotated[Path | None, typer.Option(metavar="FILE.png", help="Plot J&F against FPS and memory against frame index.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing report files.")] = False,
    long: Annotated[int | None, typer.Option("--long", help="Stream a synthetic N-frame clip; report memory and latency against frame index.")] = None,
    sparse: Annotated[str, typer.Option(help="Comma list of region modes (SpVOS's): none, static, residual, triple.")] = "none",
    write_every: Annotated[str | None, typer.Option(metavar="N", help="Comma list: write a frame to memory every N frames (default: 1).")] = None,
    reuse: Annotated[str, typer.Option(metavar="TAUS", help="Comma list of frame gate thresholds: a frame whose P_gate reaches tau keeps the last result (1: never).")] = "1",
    gates: Annotated[str | None, typer.Option(metavar="NAMES", help="Comma list of region gates for --reuse and --sparse: weights.toml names or files, or 'fixed' for the change test's fixed threshold (default: MODEL-gates).")] = None,
    tta: Annotated[str, typer.Option(help="Comma list of test-time augmentations: none, flip.")] = "none",
    runtime: Annotated[str, typer.Option(help="Comma list of backbone runtimes: auto (as segment chooses), torch, onnx, onnx-int8 (ONNX Runtime on the CPU).")] = "auto",
    profile: Annotated[bool, typer.Option("--profile", help="vos: also break each timed frame down by stage (decode, resize, trunk, memory read, decoder, memory write, upsample, encode, other): median and p90 ms per frame, in the table and the report.")] = False,
) -> None:
    """Measure accuracy, speed, FLOPs and memory of every configuration, interleaved per sequence (semseg: per frame)."""
    from vidseg_cli.cli.bench_job import (  # torch: imported when a command runs
        bench,
        bench_predict,
        bench_semseg,
    )

    if profile and (task != Task.vos or long is not None):
        raise VidsegError("--profile breaks down the frames of --task vos on a dataset; leave it out here")
    if task == Task.semseg:
        bench_semseg(
            data=data, split=split, model=model or DEFAULT_SEMSEG_MODEL, memory=memory or "fifo", slots=slots or "1",
            read=read, radius=radius, size=size, runtime=runtime, consistency=consistency, corrupt=corrupt, device=device.value, json=json,
            report=report, csv_path=csv_path, plot=plot, force=force, far=far,
        )
        return
    if task == Task.predict:
        bench_predict(
            data=data, limit=limit, timed=timed, model=model or DEFAULT_PREDICT_MODEL, memory=memory or "stremn",
            slots=slots or "5", update=update, device=device.value, json=json, report=report, csv_path=csv_path, plot=plot,
            force=force,
        )
        return
    bench(
        data=data, sequences=sequences, model=model or DEFAULT_VOS_MODEL, size=size, memory=memory, slots=slots or "5", update=update,
        every=every, fusion=fusion, device=device.value, json=json, report=report, csv_path=csv_path, plot=plot,
        force=force, long=long, sparse=sparse, write_every=write_every, reuse=reuse,
        gates=gates, tta=tta, runtime=runtime, profile=profile,
    )
