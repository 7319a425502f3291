"""`vidseg train reuse`: add-ons trained on a frozen VOS model."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import user_errors
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
from vidseg_cli.vos.train import make_generator
from vidseg_cli.weights.registry import Checkpoint, checkpoint

GateTarget = Enum("GateTarget", {name.replace("-", "_"): name for name in GATE_TARGETS}, type=str)


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
