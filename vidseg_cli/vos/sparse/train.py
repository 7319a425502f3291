"""`vidseg train sparse`: SpVOS's gates learned on a frozen memory network (eqs 9-13).

Mixed sparse training: a clip's frame 0 carries its mask and frame 1 its predicted mask; both
run dense and fill the memory. Every later frame runs the relaxed gated backbone: each gated
block's dense output mixed with the previous frame's output and the skip value by one-hot
policies sampled with Gumbel-softmax (straight-through), frame after frame as at inference.

    Loss = L_seg + gamma * (L_layer / K + beta * L_global)   (eqs 10-13, K gated layers)

L_seg is the bootstrapped cross-entropy of the sparse frames; L_layer holds each block's
computed share between bounds that relax from the target t_s to (0, 1) over training
(eq 11), and L_global holds the cost-weighted share of all gated work at t_s (eq 12).

SpVOS trains the network with its gates. ``--tune key,decoder`` does so for the heads that
read the sparse features (at a third of the gates' learning rate), on a copy of the model;
L_seg then also counts frame 1, which runs dense, so the tuned heads keep serving memory
frames. The backbone stays frozen.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vidseg_cli.io.outputs import write_file_atomically
from vidseg_cli.memory.slot import Slot
from vidseg_cli.models.backbone import Features
from vidseg_cli.train.loop import (
    run_steps,
)
from vidseg_cli.train.losses import bootstrapped_nll
from vidseg_cli.vos.aggregate import aggregate
from vidseg_cli.vos.clips import Clip, ClipSampler
from vidseg_cli.vos.memnet import MemoryNetwork
from vidseg_cli.vos.sparse.gates import global_loss, layer_loss, relaxed_bounds
from vidseg_cli.vos.sparse.network import (
    SPARSE_ARCH,
    TUNED_PREFIX,
    LayerState,
    Shares,
    SparseConfig,
    SparseGates,
    dense_runner,
    observe_objects,
    relaxed_runner,
    run_backbone,
)
from vidseg_cli.vos.train import AddonTrainer, on_grid

TUNED_LR_SCALE = 1 / 3  # tuned heads learn slower than the gates: they start trained
GATES = "gates.safetensors"
LAYER_COSTS = ("flops", "time")  # what eq 12 weighs layers by


@dataclass(frozen=True)
class SparseTrainConfig:
    steps: int = 1500
    clip_length: int = 5  # frames 0-1 dense (memory), 2.. sparse, each against the one before
    crop: tuple[int, int] = (256, 384)
    lr: float = 1e-3
    max_gap: int = 2  # sparse frames follow each other closely at inference
    target: float = 0.1  # t_s: the share of gated work computed (SpVOS trains at 0.1)
    gamma: float = 1.0  # weight of the sparsity loss (eq 10)
    beta: float = 1.0  # weight of the global term (eq 13)
    temperature: float = 1.0  # Gumbel-softmax (eq 9)
    top_p: float = 0.5  # bootstrapped CE: share of hardest pixels kept
    cost: str = "flops"  # what eq 12 weighs layers by: FLOPs (the paper) or measured time
    seed: int = 0
    gates: SparseConfig = field(default_factory=SparseConfig)


@torch.no_grad()
def measure_layer_seconds(model: MemoryNetwork, gates: SparseGates, size: tuple[int, int], repeats: int = 5) -> dict:
    """Median dense time of every gated layer on one frame of ``size``: eq 12's weights when
    they should follow the wall clock. On a CPU FLOPs do not: the stride-16 blocks hold many
    FLOPs per pixel and take little time, while block 1 (16 -> 96 channels on the stride-2
    map) is memory-bound and takes ~40% of the backbone with a small share of its FLOPs."""
    times: dict = {}

    def timed(key, layer, x):
        start = time.perf_counter()
        y = layer(x)
        if key in gates.pool:
            times.setdefault(key, []).append(time.perf_counter() - start)
        return y

    image = torch.rand(1, 3, *size, device=next(model.parameters()).device) * 255
    for _ in range(repeats + 1):
        features = run_backbone(model.backbone, image, timed)
        readout = torch.zeros(1, 1, model.config.value_dim, *features.s16.shape[-2:], device=image.device)
        model.decode(readout, features, timed)
    return {key: float(np.median(values[1:])) for key, values in times.items()}


@torch.no_grad()
def _memory_frames(model: MemoryNetwork, gates: SparseGates, clip: Clip, state: LayerState) -> tuple[list[Slot], Features]:
    """Frames 0 and 1, dense: frame 0 with its mask, frame 1 with its prediction (whose
    object cue the first sparse frame's gates read). Returns the slots and frame 1's features."""
    slots = []
    for t in (0, 1):
        features = run_backbone(model.backbone, clip.images[t : t + 1], dense_runner(gates, state))
        key = model.keys(features)[0]
        if t == 0:
            probs = aggregate(on_grid(clip.masks[:1], features.s4.shape[-2:])[0])[1:]
        else:
            readout = model.read(key, slots, 1)[None]
            probs = aggregate(torch.sigmoid(model.decode(readout, features, dense_runner(gates, state))[0]))[1:]
        slots.append(Slot(key, model.values(features, probs[None])[0], frame=t, permanent=t == 0))
    observe_objects(gates.config, state, probs)
    return slots, features


def _dense_loss(model: MemoryNetwork, features: Features, slots: list[Slot], truth: torch.Tensor, top_p: float) -> torch.Tensor:
    """Frame 1 from frame 0's memory, with gradients to the tuned heads."""
    readout = model.read(model.keys(features)[0], slots[:1], 1)
    probs = aggregate(torch.sigmoid(model.decode(readout[None], features)[0]))
    full = F.interpolate(probs[None], size=truth.shape[-2:], mode="bilinear", align_corners=False)[0]
    return bootstrapped_nll(full, truth, top_p)


def sparse_loss(
    model: MemoryNetwork,
    gates: SparseGates,
    clip: Clip,
    config: SparseTrainConfig,
    progress: float,
    layer_seconds: dict | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq 10 over the clip's sparse frames, and its parts (and the computed share) for the log."""
    state = LayerState()
    slots, features1 = _memory_frames(model, gates, clip, state)
    lower, upper = relaxed_bounds(progress, config.target)
    seg, sparsity, computed = [], [], []
    if gates.config.tuned:
        seg.append(_dense_loss(model, features1, slots, clip.masks[1], config.top_p))
    size = clip.masks.shape[-2:]
    for t in range(2, len(clip.masks)):
        shares = Shares()
        run = relaxed_runner(gates, state, shares, config.temperature)
        features = run_backbone(model.backbone, clip.images[t : t + 1], run)
        readout = model.read(model.keys(features)[0], slots, 1)
        probs = aggregate(torch.sigmoid(model.decode(readout[None], features, run)[0]))
        observe_objects(gates.config, state, probs[1:])
        full = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
        seg.append(bootstrapped_nll(full, clip.masks[t], config.top_p))
        costs = gates.costs(state.outputs) if layer_seconds is None else layer_seconds
        layers = [shares.computed[i] for i in costs]
        weights = list(costs.values())
        # eq 11 sums over layers; averaged here, so the term does not grow with the number
        # of gated layers (15) and drown the segmentation loss in the first steps
        layer = layer_loss(layers, lower, upper) / len(layers)
        sparsity.append(layer + config.beta * global_loss(layers, weights, config.target))
        computed.append(sum(s.item() * c for s, c in zip(layers, weights, strict=True)) / sum(weights))
    seg_loss, sparsity_loss = torch.stack(seg).mean(), torch.stack(sparsity).mean()
    loss = seg_loss + config.gamma * sparsity_loss
    return loss, {"seg": seg_loss.item(), "sparsity": sparsity_loss.item(), "computed": float(np.mean(computed))}


class SparseTrainer(AddonTrainer):
    """AdamW on the gates and the tuned heads; the rest of the memory network stays frozen
    (and in eval mode: BatchNorm statistics stay)."""

    def __init__(self, model: MemoryNetwork, sampler: ClipSampler, config: SparseTrainConfig, run_dir: Path, device: torch.device) -> None:
        if config.gates.tuned:
            model = model.with_own_heads()  # the registry's model is shared
        super().__init__(model, sampler, config, run_dir, device)
        self.gates = self.learner = SparseGates(config.gates, model.backbone, model.heads.decoder).to(device)
        groups = [{"params": list(self.gates.parameters()), "scale": 1.0}]
        for head in self.tuned_heads().values():
            head.requires_grad_(True)
            groups.append({"params": list(head.parameters()), "scale": TUNED_LR_SCALE})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=0.0)
        self.layer_seconds = measure_layer_seconds(model, self.gates, config.crop) if config.cost == "time" else None

    def tuned_heads(self) -> dict[str, torch.nn.Module]:
        return {name: getattr(self.model.heads, name) for name in self.config.gates.tuned}

    def loss(self, clip: Clip) -> tuple[torch.Tensor, dict[str, float]]:
        progress = self.step / max(1, self.config.steps)
        return sparse_loss(self.model, self.gates, clip, self.config, progress, self.layer_seconds)

    def own_state(self) -> dict:
        tuned = {name: head.state_dict() for name, head in self.tuned_heads().items()}
        return {"gates": self.gates.state_dict(), "tuned": tuned, "layer_seconds": self.layer_seconds}

    def load_own_state(self, state: dict) -> None:
        self.gates.load_state_dict(state["gates"])
        for name, head in self.tuned_heads().items():
            head.load_state_dict(state["tuned"][name])
        self.layer_seconds = state.get("layer_seconds")  # the run's own measurement, not a new one

    def save_gates(self, base: str) -> Path:
        path = self.run_dir / GATES
        save_gates(self.gates, path, base, {"steps": str(self.step), "seed": str(self.config.seed)}, self.tuned_heads())
        return path

    def run(self, log: Callable[[str], None], every: int = 25, checkpoint_every: int = 250) -> None:
        run_steps(self, self.config.steps, log, every, checkpoint_every)


def save_gates(
    gates: SparseGates, path: Path, base: str, extra: dict[str, str] | None = None, tuned: dict[str, torch.nn.Module] | None = None
) -> None:
    """The gates (and any heads tuned with them) as safetensors, naming the memory network
    they were trained on."""
    metadata = {"arch": SPARSE_ARCH, "config": json.dumps(gates.config.to_dict(), sort_keys=True), "base": base, **(extra or {})}
    tensors = dict(gates.state_dict())
    for name, head in (tuned or {}).items():
        tensors.update({f"{TUNED_PREFIX}{name}.{k}": t for k, t in head.state_dict().items()})
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    write_file_atomically(path, lambda staging: save_file(tensors, str(staging), metadata=metadata), force=True)
