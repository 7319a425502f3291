"""`vidseg train reuse` and `vidseg train sparse`: add-ons trained on a frozen VOS model."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import comma_list, user_errors
from vidseg_cli.cli.train.run_folder import crop_size, prepare, train_in
from vidseg_cli.engine.job import pick_device
from vidseg_cli.engine.threads import use_all_cores
from vidseg_cli.errors import VidsegError
from vidseg_cli.options import DEFAULT_VOS_MODEL
from vidseg_cli.vos.clips import ClipSampler
from vidseg_cli.vos.memnet import MemoryNetwork
from vidseg_cli.vos.models import create_vos_model
from vidseg_cli.vos.reuse.heads import ReuseConfig
from vidseg_cli.vos.reuse.train import GATE_TARGETS, ReuseTrainConfig, ReuseTrainer
from vidseg_cli.vos.sparse.gates import POLICIES
from vidseg_cli.vos.sparse.network import TUNABLE_HEADS, SparseConfig
from vidseg_cli.vos.sparse.train import LAYER_COSTS, SparseTrainConfig, SparseTrainer
from vidseg_cli.vos.train import make_generator
from vidseg_cli.weights.registry import Checkpoint, checkpoint

GateTarget = Enum("GateTarget", {name.replace("-", "_"): name for name in GATE_TARGETS}, type=str)
SparseCost = Enum("SparseCost", {name: name for name in LAYER_COSTS}, type=str)
SparseGateMode = Enum("SparseGateMode", {name: name for name in POLICIES}, type=str)


@user_errors
@flags.taking(flags.RunFlags)
def train_reuse_command(
    data: flags.DavisData,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, reuse.safetensors, config.json, train.log.")],
    model: Annotated[str, typer.Option(help="The learned VOS model the heads serve: a name or a .safetensors file.")] = DEFAULT_VOS_MODEL,
    steps: flags.ClipSteps = ReuseTrainConfig.steps,
    seed: flags.Seed = 0,
    clip_length: Annotated[int, typer.Option(min=2, max=1000, help="Frames per clip: memory, one full frame, then reused frames.")] = ReuseTrainConfig.clip_length,
    crop: flags.Crop = "256x384",
    lr: flags.AdamLR = ReuseTrainConfig.lr,
    max_gap: flags.MaxGap = ReuseTrainConfig.max_gap,
    margin: Annotated[float, typer.Option(help="m1: the gate target's floor, reached halfway (eq 4).")] = ReuseTrainConfig.margin,
    tolerance: Annotated[float, typer.Option(help="m2: gate errors below it cost the same (eq 5).")] = ReuseTrainConfig.tolerance,
    gate_target: Annotated[GateTarget, typer.Option(help="What P_gate learns: IoU of the reused mask with the full network's (full) or of consecutive true masks (ground-truth, eq 4).")] = GateTarget.full,
    strictness: Annotated[float, typer.Option(help="The full target's exponent: > 1 asks for closer agreement at a given tau.")] = ReuseTrainConfig.strictness,
    run: flags.RunFlags = flags.RunFlags(),
) -> None:
    """Train Reuse-VOS's heads (template matching, reuse gate, delta generator, refine translator)
    on a frozen learned VOS model."""
    if clip_length < 3:
        raise VidsegError("--clip-length must be at least 3: a memory frame, a full frame and a reused one")
    if not 0.0 <= margin <= 1.0 or not 0.0 <= tolerance <= 1.0:
        raise VidsegError("--margin and --tolerance are probabilities in [0, 1]")
    if strictness <= 0:
        raise VidsegError("--strictness must be positive")
    base, spec, target = _frozen_base(model, run, "reuse heads")
    heads = ReuseConfig(refined_dim=base.config.decoder_dims[1])  # the translator speaks the decoder's R8
    config = ReuseTrainConfig(steps=steps, clip_length=clip_length, crop=crop_size(crop), lr=lr, max_gap=max_gap,
                              margin=margin, tolerance=tolerance, gate_target=gate_target.value,
                              strictness=strictness, seed=seed, heads=heads)
    prepare(out, run, [data, model])
    rng = make_generator(seed)
    trainer = ReuseTrainer(base, ClipSampler(data, config.clip_length, config.crop, rng), config, out, target)

    def train_and_save(log: Callable[[str], None]) -> Path:
        trainer.run(log, checkpoint_every=run.checkpoint_every)
        return trainer.save_heads(spec.sha256)

    train_in(out, trainer, config, run, lambda step: f"training reuse heads for {model}: {config.steps} steps from step {step} on {target} (seed {seed})", train_and_save)


@user_errors
@flags.taking(flags.RunFlags)
def train_sparse_command(
    data: flags.DavisData,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt, gates.safetensors, config.json, train.log.")],
    mode: Annotated[SparseGateMode, typer.Option(help="static (skip or compute), residual (reuse or compute) or triple.")] = SparseGateMode.triple,
    model: Annotated[str, typer.Option(help="The learned VOS model the gates serve: a name or a .safetensors file.")] = DEFAULT_VOS_MODEL,
    target: Annotated[float, typer.Option(help="t_s: the share of the gated work to compute (eqs 11-12).")] = SparseTrainConfig.target,
    tile: Annotated[int, typer.Option(help="Output pixels per tile side: one gate decision per tile.")] = SparseConfig.tile,
    steps: flags.ClipSteps = SparseTrainConfig.steps,
    seed: flags.Seed = 0,
    clip_length: Annotated[int, typer.Option(min=2, max=1000, help="Frames per clip: two dense memory frames, then sparse ones.")] = SparseTrainConfig.clip_length,
    crop: flags.Crop = "256x384",
    lr: flags.AdamLR = SparseTrainConfig.lr,
    max_gap: flags.MaxGap = SparseTrainConfig.max_gap,
    gamma: Annotated[float, typer.Option(help="Weight of the sparsity loss (eq 10).")] = SparseTrainConfig.gamma,
    cost: Annotated[SparseCost, typer.Option(help="What the global sparsity loss weighs layers by: FLOPs (eq 12) or their dense time measured on this machine at the start.")] = SparseCost.flops,
    object_aware: Annotated[bool, typer.Option(help="Gates also read where the objects were on the last frame (their probabilities, dilated by 32 and 96 pixels).")] = True,
    reuse_far: Annotated[bool, typer.Option(help="Gates may reuse only farther than 32 pixels from the last frame's objects (needs --object-aware).")] = False,
    tune: Annotated[str, typer.Option(help="Heads of the memory network to train with the gates, comma-separated: key, decoder (none by default). The gates file carries them.")] = "",
    run: flags.RunFlags = flags.RunFlags(),
) -> None:
    """Train SpVOS's triple gates (or a baseline's) in the backbone of a frozen learned VOS model."""
    if clip_length < 3:
        raise VidsegError("--clip-length must be at least 3: two memory frames and a sparse one")
    if not 0.0 < target <= 1.0:
        raise VidsegError("--target is a share of the work in (0, 1]")
    if tile < 1:
        raise VidsegError("--tile must be at least 1")
    if reuse_far and not object_aware:
        raise VidsegError("--reuse-far needs --object-aware: it reads where the objects were")
    tuned = tuple(comma_list(tune, option="--tune"))
    unknown = sorted(set(tuned) - set(TUNABLE_HEADS))
    if unknown:
        raise VidsegError(f"--tune {unknown[0]!r}: choose from {', '.join(TUNABLE_HEADS)}")
    base, spec, device_ = _frozen_base(model, run, "sparse gates")
    config = SparseTrainConfig(
        steps=steps, clip_length=clip_length, crop=crop_size(crop), lr=lr, max_gap=max_gap, target=target, gamma=gamma,
        seed=seed, gates=SparseConfig(mode=mode.value, tile=tile, object_aware=object_aware, reuse_far=reuse_far, tuned=tuned), cost=cost.value,
    )
    prepare(out, run, [data, model])
    rng = make_generator(seed)
    trainer = SparseTrainer(base, ClipSampler(data, config.clip_length, config.crop, rng), config, out, device_)

    def train_and_save(log: Callable[[str], None]) -> Path:
        if trainer.layer_seconds is not None:
            log("layer costs (ms): " + ", ".join(f"{k} {1000 * v:.2f}" for k, v in trainer.layer_seconds.items()))
        trainer.run(log, checkpoint_every=run.checkpoint_every)
        return trainer.save_gates(spec.sha256)

    train_in(out, trainer, config, run, lambda step: f"training {mode.value} sparse gates for {model}: {config.steps} steps from step {step} on {device_} (seed {seed})", train_and_save)


def _frozen_base(model: str, run: flags.RunFlags, kind: str) -> tuple[MemoryNetwork, Checkpoint, torch.device]:
    """The learned VOS model an add-on trains on, on the device to train on, and its
    checkpoint (whose sha256 the add-on's file records), resolved once."""
    use_all_cores()
    device = pick_device(run.device.value)
    spec = checkpoint(model, "vos")
    base = create_vos_model(spec, device)
    if not isinstance(base, MemoryNetwork):
        raise VidsegError(f"--model {model}: {kind} need a learned memory network (arch memnet)")
    return base, spec, device
