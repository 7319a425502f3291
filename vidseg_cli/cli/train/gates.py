"""`vidseg train gates`: the region gates of --sparse and --reuse, on a frozen VOS model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import torch
import typer

from vidseg_cli.cli import flags
from vidseg_cli.cli.common import user_errors
from vidseg_cli.cli.train.run_folder import open_run, train_in
from vidseg_cli.errors import VidsegError
from vidseg_cli.models.registry import with_runtime
from vidseg_cli.options import DEFAULT_VOS_MODEL
from vidseg_cli.vos.davis import load_davis
from vidseg_cli.vos.memnet import MemoryNetwork
from vidseg_cli.vos.models import create_vos_model
from vidseg_cli.vos.regions.train import GateTrainConfig, GateTrainer, Recording, record
from vidseg_cli.weights.registry import checkpoint


@user_errors
@flags.taking(flags.RunFlags)
def train_gates_command(
    data: Annotated[list[Path], typer.Option(help="Training data in DAVIS layout; repeat for more sets.")],
    out: Annotated[Path, typer.Option(help="Run folder: records/, checkpoint.pt, gates.safetensors, config.json, train.log.")],
    model: Annotated[str, typer.Option(help="The learned VOS model the gates serve: a name or a .safetensors file.")] = DEFAULT_VOS_MODEL,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps, each on --pairs frame pairs.")] = GateTrainConfig.steps,
    pairs: Annotated[int, typer.Option(min=1, help="Frame pairs per step.")] = GateTrainConfig.pairs,
    max_gap: flags.MaxGap = GateTrainConfig.max_gap,
    lr: flags.AdamLR = GateTrainConfig.lr,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="The cell gate's P(compute) above which a cell computes, on a frame that runs.")] = GateTrainConfig.threshold,
    trigger: Annotated[float, typer.Option(min=0.0, max=1.0, help="The P(compute) some cell must pass for a frame to run at all.")] = GateTrainConfig.trigger,
    seed: flags.Seed = 0,
    run: flags.RunFlags = flags.RunFlags(),
) -> None:
    """Train the region gates (which cells to compute, whether a frame needs any) with the
    VOS model frozen: it runs once over the data, densely, and the gates learn from that."""
    config = GateTrainConfig(steps=steps, pairs=pairs, max_gap=max_gap, lr=lr, threshold=threshold, trigger=trigger, seed=seed)
    device = open_run(out, run, [*data, model])
    torch.manual_seed(seed)
    spec = checkpoint(model, "vos")
    base = create_vos_model(spec, device)
    if not isinstance(base, MemoryNetwork):
        raise VidsegError(f"--model {model}: region gates need a learned memory network (arch memnet)")
    recordings = _recordings(with_runtime(base.eval(), "auto", device), data, out / "records", config, device)
    trainer = GateTrainer(recordings, config, out)

    def train_and_save(log: Callable[[str], None]) -> Path:
        trainer.run(log, checkpoint_every=run.checkpoint_every)
        return trainer.save_gates(model, spec.sha256)

    train_in(out, trainer, config, run, lambda step: f"training region gates for {model}: {config.steps} steps from step {step} on {len(recordings)} sequences (seed {seed})", train_and_save)


def _recordings(model, data: list[Path], folder: Path, config: GateTrainConfig, device: torch.device) -> list[Recording]:
    """Every sequence's recording, made once and kept in ``folder`` (a resumed run reads them)."""
    folder.mkdir(exist_ok=True)
    recordings = []
    for root in data:
        for sequence in load_davis(root):
            path = folder / f"{root.name}-{sequence.name}.pt"
            if path.is_file():
                recordings.append(Recording(**torch.load(path, weights_only=True)))
                continue
            typer.echo(f"recording {root.name}/{sequence.name}", err=True)
            recordings.append(record(model, sequence, config.size, device))
            torch.save(vars(recordings[-1]), path)
    return recordings
