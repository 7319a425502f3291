"""The step loop the head trainers share: train, log running means, checkpoint; and the
run state every trainer checkpoints (optimizer, step, random generators, history)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vidseg_cli.io.outputs import write_file_atomically

CHECKPOINT = "checkpoint.pt"


class StepTrainer(Protocol):
    step: int
    history: list[dict]

    def train_step(self) -> dict[str, float]: ...

    def save_checkpoint(self) -> None: ...


def run_steps(
    trainer: StepTrainer,
    steps: int,
    log: Callable[[str], None],
    every: int,
    checkpoint_every: int,
    status: Callable[[], str] = lambda: "",
) -> None:
    """Step until `steps`, logging each loss's mean over the last `every` steps (and `status()`)
    and checkpointing every `checkpoint_every` steps and at the end."""
    start, first, window = time.perf_counter(), trainer.step, []
    while trainer.step < steps:
        window.append(trainer.train_step())
        last = trainer.step == steps
        if trainer.step % every == 0 or last:
            rate = (trainer.step - first) / (time.perf_counter() - start)
            means = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            log(f"step {trainer.step}/{steps} " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                + status() + f" {rate:.2f} steps/s")
            trainer.history.append({"step": trainer.step, **{k: round(v, 5) for k, v in means.items()}})
            window = []
        if trainer.step % checkpoint_every == 0 or last:
            trainer.save_checkpoint()


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group at ``lr`` times its own ``scale`` (1 where a group has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("scale", 1.0)


def take_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_norm: float | None = 1.0) -> None:
    """Back-propagate ``loss`` from zeroed gradients, clip the gradient norm of everything the
    optimiser updates to ``max_norm`` (None: no clipping), and step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_norm)
    optimizer.step()


def polyak_decay(limit: float, step: int) -> float:
    """The averaged weights' decay at a step: at most ``limit``, and less in the first steps,
    so that the average follows the training weights closely before it settles."""
    return min(limit, (1 + step) / (10 + step))


def cosine_to_a_tenth(peak: float, step: int, steps: int) -> float:
    """The learning rate `step` of `steps` into a cosine decay from `peak` to a tenth of it."""
    share = step / max(1, steps)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * share)))


def save_run_state(
    run_dir: Path, optimizer: torch.optim.Optimizer, step: int, rng: np.random.Generator,
    history: list[dict], own: dict[str, Any],
) -> None:
    """``run_dir/checkpoint.pt``, atomically: the trainer's ``own`` tensors and settings,
    with the state every trainer needs to go on exactly (optimizer, step, both generators)."""
    state = {
        **own,
        "optimizer": optimizer.state_dict(),
        "step": step,
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }
    write_file_atomically(run_dir / CHECKPOINT, lambda path: torch.save(state, path), force=True)


def load_run_state(
    run_dir: Path, device: torch.device, optimizer: torch.optim.Optimizer, rng: np.random.Generator
) -> dict[str, Any]:
    """Restores the optimizer and both generators; returns the whole state (``step``,
    ``history`` and the trainer's own entries) for the trainer to take its part."""
    state = torch.load(run_dir / CHECKPOINT, map_location=device, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    return state
