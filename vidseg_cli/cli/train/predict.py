"""`vidseg train predict`: the video predictor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import user_errors
from vidseg_cli.cli.train.run_folder import open_run, train_in
from vidseg_cli.errors import VidsegError
from vidseg_cli.options import MAX_SLOTS, MemoryOptions, check_choice


@user_errors
@flags.taking(flags.RunFlags)
def train_predict_command(
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, predictor.safetensors, config.json, train.log.")],
    data: Annotated[str, typer.Option(metavar="mmnist|PATH", help="mmnist: Moving MNIST generated from --digits; PATH: a video, or a folder of videos (or frame folders), to learn from.")] = "mmnist",
    digits: Annotated[Path | None, typer.Option(help="MNIST digits for --data mmnist (mnist_5k.csv.gz: 784 pixels, then the label, 500 a class).")] = None,
    val: Annotated[Path | None, typer.Option(help="PATH data: another video, or a folder of them, to validate on (default: fixed windows of the training videos).")] = None,
    size: Annotated[int, typer.Option(min=16, max=512, help="PATH data: the short side frames are brought to (a multiple of 4).")] = 64,
    colour: Annotated[bool, typer.Option("--colour/--grey", help="PATH data: learn colour frames or grey ones.")] = False,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 20_000,
    batch: Annotated[int, typer.Option(min=1, max=1024, help="Sequences per step, each with its own memory bank.")] = 16,
    teacher_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of the steps over which true future frames are phased out as inputs (scheduled sampling; 0: always the model's own).")] = 0.5,
    seed: flags.Seed = 0,
    lr: Annotated[float, typer.Option(help="Peak Adam learning rate.")] = 1e-3,
    memory: Annotated[str, typer.Option(help="Memory policy while training: stremn, fifo, first-last, stm.")] = "stremn",
    slots: Annotated[int, typer.Option(min=1, max=MAX_SLOTS, help="Memory slots.")] = 5,
    update: Annotated[str, typer.Option(help="stremn update rule.")] = "C",
    loss: Annotated[str, typer.Option(metavar="shrinkage|mse", help="Main loss: STReMN's shrinkage loss on L1 and L2, or the squared error (what MSE scores; under uncertainty L1 prefers a blank frame, L2 a blur).")] = "shrinkage",
    gradient_weight: Annotated[float | None, typer.Option(min=0.0, help="Weight of the scale-invariant gradient loss (default: 0.1 for stremn; 0 for the peers, which OpenSTL trains with the squared error alone: the term makes a linear output keep a haze on a blank canvas).")] = None,
    width: Annotated[int, typer.Option(min=8, max=512, help="Feature channels of every encoder and decoder block.")] = 64,
    blocks: Annotated[int, typer.Option(min=1, max=12, help="Encoder blocks (and decoder blocks).")] = 6,
    shift_radius: Annotated[int, typer.Option(min=0, max=8, help="Also move the last frame by a learnt distribution over shifts of up to R pixels (0: the logit change alone).")] = 0,
    shift_kernel: Annotated[str, typer.Option(metavar="patch|pixel|splat|splat-average", help="With --shift-radius: one shift distribution per 4x4 patch, one per pixel (where it comes from), or one per patch of the last frame (where it goes: splat, which adds what arrives, for a blank canvas; splat-average, which averages it and fills holes with the last frame, for real video).")] = "patch",
    commit: Annotated[str, typer.Option(metavar="never|fed|always", help="With --shift-radius: which frames are moved by each kernel's most likely shift instead of the blend of all shifts: never; fed (the frame fed back to the next step: one step's uncertainty blurs that step only); always (trained straight-through).")] = "never",
    recurrent: Annotated[bool, typer.Option("--recurrent", help="Carry a convolutional GRU state from step to step, beside the memory (a motion's phase read from the whole history, not three frames).")] = False,
    moves: Annotated[bool, typer.Option("--moves", help="With --shift-radius: the shift head also reads each pixel's moves over the --history frames, found by block matching (how a 3-or-4-pixel phase is read).")] = False,
    still: Annotated[float, typer.Option(min=0.5, max=0.999, help="With --shift-radius, from scratch (not with --init): the zero move's starting share of each shift distribution. 0.9 suits Moving MNIST; on real video, where frames change little, 0.99 starts near copying the last frame (0.9 starts with a blur that compounds).")] = 0.9,
    history: Annotated[int, typer.Option(min=3, max=20, help="Frames each step reads (the last N before the one it predicts): the longer, the more precisely a move is read (docs/training.md).")] = 3,
    init: Annotated[str | None, typer.Option(metavar="NAME|FILE", help="Start from a trained predictor (a weights.toml name or a .safetensors file): every tensor of it is taken, and what it lacks (e.g. --recurrent's state, a longer --history's older frames) starts fresh; the other shape flags must be its own.")] = None,
    arch: Annotated[str, typer.Option(metavar="stremn|convlstm|simvp", help="stremn: our predictor over the memory engine; convlstm, simvp: peer baselines at their fixed small size, for side-by-side runs on the same data and budget (no memory; --width, --blocks and --shift-* shape stremn only).")] = "stremn",
    val_every: Annotated[int, typer.Option(min=1, help="Validate every N steps.")] = 1000,
    val_sequences: Annotated[int, typer.Option(min=1, help="Validation sequences (training digits, their own seed).")] = 200,
    run: flags.RunFlags = flags.RunFlags(),
) -> None:
    """Train the STReMN video predictor (memory bank, fusion cell, decoder), or a peer baseline, on Moving MNIST or on your videos."""
    from vidseg_cli.engine.job import make_bank
    from vidseg_cli.predict.model import ARCH, ARCHITECTURES, COMMITS, STILL, create_predictor
    from vidseg_cli.predict.motion import SHIFT_KERNELS
    from vidseg_cli.weights.registry import checkpoint
    from vidseg_cli.predict.peers import PEERS
    from vidseg_cli.predict.train import LOSSES, PredictTrainConfig, PredictTrainer, load_trained

    if not lr > 0:
        raise VidsegError("--lr must be positive")
    check_choice("--loss", loss, LOSSES)
    check_choice("--arch", arch, ("stremn", *PEERS))
    check_choice("--shift-kernel", shift_kernel, tuple(SHIFT_KERNELS))
    check_choice("--commit", commit, COMMITS)
    shift = {"shift_radius": shift_radius, "shift_kernel": shift_kernel, "commit": commit}
    if arch != "stremn" and (width, blocks, shift_radius, shift_kernel, commit, recurrent, history, moves) != (64, 6, 0, "patch", "never", False, 3, False):
        raise VidsegError(f"--width, --blocks, --shift-*, --commit, --recurrent, --history and --moves shape the stremn predictor; --arch {arch} trains at its own fixed size")
    if shift_radius == 0 and (shift_kernel, commit, moves, still) != ("patch", "never", False, STILL):
        raise VidsegError("--shift-kernel, --commit, --moves and --still shape the shift head: give --shift-radius R too")
    if init is not None and still != STILL:
        raise VidsegError("--still sets the shift head's start for a run from scratch; with --init the start is the trained model's")
    if gradient_weight is None:
        gradient_weight = PredictTrainConfig.gradient_weight if arch == "stremn" else 0.0
    make_bank(MemoryOptions(memory, slots, update))  # an unknown policy or rule: one line, before the run folder
    source, val_source, inputs = _prediction_clips(data, digits, val, size, 3 if colour else 1)
    trained = create_predictor(init) if init is not None else None
    config = PredictTrainConfig(
        steps=steps, batch=batch, teacher_share=teacher_share, lr=lr, seed=seed, memory=memory, slots=slots, update=update,
        loss=loss, gradient_weight=gradient_weight, val_sequences=val_sequences,
        arch=ARCH if arch == "stremn" else PEERS[arch][0].arch,
        model=_model_config(arch, source, width, blocks, shift | {"recurrent": recurrent, "history": history, "moves": moves}),
        init=checkpoint(init, "predict").sha256 if init is not None else "", still=still,
    )
    if trained is not None:  # a shape that does not fit: one line, before the run folder
        load_trained(ARCHITECTURES[config.arch][0](config.model), trained)
    target = open_run(out, run, [*inputs, init if init is not None and init.endswith(".safetensors") else None])  # --force never empties the folder --init reads
    trainer = PredictTrainer(source, config, out, target, val_source)
    if trained is not None:
        trainer.start_from(trained)  # a resumed run then loads its own checkpoint over it
    train_in(
        out, trainer, config, run,
        lambda step: f"training the predictor: {config.steps} steps from step {step} on {target} (seed {seed})",
        lambda log: trainer.run(log, val_every=val_every, checkpoint_every=run.checkpoint_every),
        on_stop=trainer.save_model,  # the averaged model is usable at any step
    )


def _model_config(arch: str, source, width: int, blocks: int, shape: dict):
    from vidseg_cli.predict.model import PredictorConfig
    from vidseg_cli.predict.peers import PEERS

    frame = {"channels": source.channels, "frame_height": source.height, "frame_width": source.width}
    if arch == "stremn":
        return PredictorConfig(width=width, blocks=blocks, **shape, **frame)
    return PEERS[arch][1](**frame)


def _prediction_clips(data: str, digits: Path | None, val: Path | None, size: int, channels: int):
    """(training source, validation source, input paths) for --data mmnist|PATH."""
    from vidseg_cli.predict.clips import MovingMnist, VideoClips

    if data == "mmnist":
        if digits is None:
            raise VidsegError("--data mmnist generates Moving MNIST from --digits FILE (mnist_5k.csv.gz)")
        if val is not None:
            raise VidsegError("--val is for --data PATH (videos); Moving MNIST validates on its own sequences")
        return MovingMnist(digits), None, [digits]
    if size % 4:
        raise VidsegError(f"--size {size}: the predictor works on 4x4 patches, so a multiple of 4")
    source = VideoClips(Path(data), size, channels)
    val_source = VideoClips(val, size, channels, "--val") if val is not None else None
    if val_source is not None and (val_source.height, val_source.width) != (source.height, source.width):
        raise VidsegError(f"--val videos come out {val_source.width}x{val_source.height}, training ones {source.width}x{source.height}: give videos of one aspect")
    return source, val_source, [Path(data), *([val] if val is not None else [])]

