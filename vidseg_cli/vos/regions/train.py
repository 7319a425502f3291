"""`vidseg train gates`: the region gates learned on a frozen memory network.

Two stages, each resumable:

1. **Record.** The network runs densely over every training sequence once (on ONNX Runtime
   where it can); per frame the change test's thumbnail and the network's output at stride
   4 are kept, in ``OUT/records/<sequence>.pt``. A stopped run records only the sequences
   it has not.
2. **Fit.** Each step draws frame pairs (r, t), t - r from 1 to ``max_gap`` frames: r plays
   the frame every cell last computed, t the frame the gates must judge. The cell gate
   learns whether each cell's output at t differs from r's (cell_targets), the frame gate
   whether r's output still agrees with t's (IoU >= AGREE for every object).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vidseg_cli.engine.job import make_bank
from vidseg_cli.io.frames import FolderSource
from vidseg_cli.io.outputs import write_file_atomically
from vidseg_cli.options import MemoryOptions
from vidseg_cli.train.loop import load_run_state, run_steps, save_run_state, take_step
from vidseg_cli.vos.base import VOSModel
from vidseg_cli.vos.davis import Sequence
from vidseg_cli.vos.regions.boxes import cells_of
from vidseg_cli.vos.regions.change import frame_gain, residual
from vidseg_cli.vos.regions.gate import (
    AGREE,
    GATE_ARCH,
    RegionGates,
    agreement,
    cell_features,
    cell_targets,
    frame_features,
)
from vidseg_cli.vos.regions.tracker import RegionSettings, RegionTracker
from vidseg_cli.vos.session import VOSSession


@dataclass
class GateTrainConfig:
    steps: int = 2000
    pairs: int = 16  # frame pairs per step
    max_gap: int = 10  # frames between a pair's reference and its frame
    lr: float = 3e-3
    positive_weight: float = 4.0  # a missed change leaves a stale mask; an extra cell costs a little time
    threshold: float = 0.1  # the cell gate's P(compute) above which a cell computes, on a frame that runs
    trigger: float = 0.5  # the P(compute) some cell must pass for the frame to run (tracker.py)
    hidden: int = 16
    size: int = 360
    near: int = 3
    seed: int = 0


@dataclass
class Recording:
    thumbs: torch.Tensor  # (T, 3, h4, w4) float16
    probs: torch.Tensor  # (T, O, h4, w4) float16, the network's output before aggregation
    size: tuple[int, int]  # the processing size


def record(model: VOSModel, sequence: Sequence, size: int, device: torch.device) -> Recording:
    """The network run densely over ``sequence``: what the gates learn from."""
    tracker = RegionTracker(model, RegionSettings("dense"))
    memory = MemoryOptions()
    session = VOSSession(model, make_bank(memory, model.fusion()), size, device, regions=tracker)
    thumbs, probs, frame_size = [], [], None
    for index, frame in enumerate(FolderSource(sequence.frames)):
        session.step(frame.image, sequence.prompts.get(index))
        thumbs.append(tracker.reference.half())
        probs.append(tracker.probs.half())
        frame_size = tracker.size
    width = max(p.shape[0] for p in probs)
    probs = [F.pad(p, (0, 0, 0, 0, 0, width - p.shape[0])) for p in probs]  # objects appear late
    return Recording(torch.stack(thumbs), torch.stack(probs), frame_size)


def pair_example(recording: Recording, r: int, t: int, near: int) -> dict[str, torch.Tensor]:
    """The gates' inputs and targets for frame t judged against frame r."""
    reference, current = recording.thumbs[r].float(), recording.thumbs[t].float()
    last, now = recording.probs[r].float(), recording.probs[t].float()
    grid = cells_of(recording.size)
    difference = residual(current, reference, frame_gain(current, reference))
    age = torch.full(grid, t - r)
    features, near_cells = cell_features(difference, last, age, grid, near)
    return {
        "features": features,
        "near": near_cells,
        "cells": cell_targets(last, now, grid),
        "agrees": (agreement(last, now) >= AGREE).float(),
    }


class GateTrainer:
    """Fits ``RegionGates`` on recorded sequences; checkpoints like every head trainer."""

    def __init__(self, recordings: list[Recording], config: GateTrainConfig, out: Path) -> None:
        self.recordings = [r for r in recordings if r.thumbs.shape[0] > 1]
        self.config, self.out = config, out
        torch.manual_seed(config.seed)
        self.gates = RegionGates(config.hidden)
        self.optimizer = torch.optim.Adam(self.gates.parameters(), lr=config.lr)
        self.rng = np.random.default_rng(config.seed)
        self.step, self.history = 0, []

    def train_step(self) -> dict[str, float]:
        examples = [self._draw() for _ in range(self.config.pairs)]
        features = torch.stack([e["features"] for e in examples])
        targets = torch.stack([e["cells"] for e in examples])
        logits = self.gates.cell_logits(features)
        weight = 1 + (self.config.positive_weight - 1) * (targets > 0).float()
        cell_loss = F.binary_cross_entropy_with_logits(logits, targets, weight=weight)
        gate = torch.sigmoid(logits.detach())
        frames = torch.stack([frame_features(g, e["features"], e["near"], self.config.threshold) for g, e in zip(gate, examples, strict=True)])
        agrees = torch.stack([e["agrees"] for e in examples])
        frame_loss = F.binary_cross_entropy_with_logits(self.gates.frame_logits(frames), agrees)
        take_step(self.optimizer, cell_loss + frame_loss)
        self.step += 1
        return {"cell": cell_loss.item(), "frame": frame_loss.item()}

    def _draw(self) -> dict[str, torch.Tensor]:
        recording = self.recordings[self.rng.integers(len(self.recordings))]
        frames = recording.thumbs.shape[0]
        t = int(self.rng.integers(1, frames))
        r = max(0, t - int(self.rng.integers(1, self.config.max_gap + 1)))
        return pair_example(recording, r, t, self.config.near)

    def run(self, log: Callable[[str], None], checkpoint_every: int) -> None:
        run_steps(self, self.config.steps, log, every=100, checkpoint_every=checkpoint_every)

    def save_checkpoint(self) -> None:
        save_run_state(self.out, self.optimizer, self.step, self.rng, self.history, {"gates": self.gates.state_dict()})

    def load_checkpoint(self) -> None:
        state = load_run_state(self.out, torch.device("cpu"), self.optimizer, self.rng)
        self.gates.load_state_dict(state["gates"])
        self.step, self.history = state["step"], state["history"]

    def save_gates(self, model: str, base_sha256: str) -> Path:
        """OUT/gates.safetensors, naming the model (and its sha256) it was trained for."""
        path = self.out / "gates.safetensors"
        config = {name: getattr(self.config, name) for name in ("hidden", "threshold", "trigger", "near")}
        metadata = {
            "arch": GATE_ARCH, "base": base_sha256, "model": model, "config": json.dumps(config),
            "steps": str(self.step), "seed": str(self.config.seed),
        }
        tensors = {name: t.detach().contiguous() for name, t in self.gates.state_dict().items()}
        write_file_atomically(path, lambda staging: save_file(tensors, str(staging), metadata=metadata), force=True)
        return path
