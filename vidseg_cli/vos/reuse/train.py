"""The losses of `vidseg train reuse`: Reuse-VOS's heads learned on a frozen memory network.

A clip's frame 0 carries its mask and fills the memory; frame 1 runs the full network (the
last fully computed frame: its score map S and refined map R8 are what later frames reuse);
every later frame t takes the reuse path from frame 1, n = t - 1 frames back:

    Loss = Loss_gp (eqs 4-5) + Loss_delta (eq 3) + BCE(reused mask, y_t)   (eq 6)

The memory network does not change, so the full path needs no gradient, and the reuse path
is trained on every frame whatever its gate says: the gate learns only from Loss_gp.

What the gate predicts (``gate_target``):

* ``ground-truth`` (eq 4 as published): IoU(y_t, y_{t-n}), how much the object moved. It
  does not know how well the translator copes: at inference a chain of reused frames grows
  from the last full one while the object barely moves, long after the translated mask has
  drifted.
* ``full`` (default): the IoU between the reused mask and the mask the full network gives at
  t, raised to ``strictness``. The gate then predicts what reusing costs against computing,
  so tau = 1 never reuses and a lower tau trades a measured agreement for speed;
  strictness > 1 spreads the high agreements over the range tau is chosen from.

Either is lifted to at least the margin m (eq 4).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vidseg_cli.io.outputs import write_file_atomically
from vidseg_cli.memory.bank import MemoryBank
from vidseg_cli.memory.policies import make_policy
from vidseg_cli.memory.slot import Slot
from vidseg_cli.models.backbone import Features
from vidseg_cli.train.loop import (
    run_steps,
)
from vidseg_cli.vos.aggregate import aggregate
from vidseg_cli.vos.clips import Clip, ClipSampler
from vidseg_cli.vos.memnet import MemoryNetwork
from vidseg_cli.vos.reuse.heads import (
    REUSE_ARCH,
    ReuseConfig,
    ReuseHeads,
    delta_loss,
    gate_probability_loss,
    gate_target,
    mask_iou,
)
from vidseg_cli.vos.train import AddonTrainer, frame_at, on_grid

HEADS = "reuse.safetensors"


GATE_TARGETS = ("full", "ground-truth")


@dataclass(frozen=True)
class FullPath:
    features: Features  # every frame's
    refined8: torch.Tensor  # frame 1's R8 (1, C, h8, w8)
    probability: torch.Tensor  # frame 1's object probability (1, 1, h4, w4)
    masks: torch.Tensor  # (T, h4, w4) bool: the full network's mask of every frame (frame 0: none)


@torch.no_grad()
def full_path(model: MemoryNetwork, clip: Clip) -> FullPath:
    """The full network on every frame from memory holding frame 0 and its mask."""
    features = model.features(clip.images)
    keys = model.keys(features)
    bank = MemoryBank(make_policy("stremn", 2, "C"), model.fusion())
    first = on_grid(clip.masks[:1], features.s4.shape[-2:])
    bank.write(Slot(keys[0], model.values(frame_at(features, 0), first)[0], frame=0, permanent=True))
    masks = torch.zeros(len(clip.masks), *features.s4.shape[-2:], dtype=torch.bool, device=features.s4.device)
    for t in range(1, len(clip.masks)):
        frame = frame_at(features, t)
        refined = model.heads.decoder.refined8(model.read(keys[t], bank.slots, 1), frame)
        probability = aggregate(torch.sigmoid(model.heads.decoder.finish(refined, frame.s4)))[1:]  # as inference
        masks[t] = probability[0] > 0.5
        if t == 1:
            refined8, first_probability = refined, probability[None]
    return FullPath(features, refined8, first_probability, masks)


def agreement(reused_logits: torch.Tensor, full_mask: torch.Tensor, strictness: float = 1.0) -> torch.Tensor:
    """The "full" gate target: IoU(reused mask, full network's mask) ** strictness, per object."""
    return mask_iou(reused_logits.detach() > 0, full_mask) ** strictness


def reuse_loss(
    model: MemoryNetwork,
    heads: ReuseHeads,
    clip: Clip,
    margin: float,
    tolerance: float = 0.0,
    target: str = "full",
    strictness: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq 6 averaged over frames 2.. of the clip, and its parts for the log."""
    full = full_path(model, clip)
    features, refined8, probability = full.features, full.refined8, full.probability
    grid8 = features.s8.shape[-2:]
    score = F.interpolate(probability, size=grid8, mode="area")  # S_{t-n} on the stride-8 grid
    targets8 = on_grid(clip.masks, grid8)
    template = heads.matching.template(features.s8[:1], targets8[:1])  # from frame 0 and its mask (S_0 = y'_0)
    parts = {"gate": [], "delta": [], "mask": []}
    for t in range(2, len(clip.masks)):
        gate, delta = heads.gate_and_delta(features.s8[t : t + 1], score, template)
        translated = heads.translator(refined8, delta)
        logits = model.heads.decoder.finish(translated, features.s4[t : t + 1])
        truth = on_grid(clip.masks[t : t + 1], logits.shape[-2:])[:, 0]
        if target == "full":
            iou = agreement(logits, full.masks[t][None], strictness)
        else:
            iou = mask_iou(clip.masks[t][None], clip.masks[1][None])
        parts["gate"].append(gate_probability_loss(gate, gate_target(iou, margin), tolerance))
        parts["delta"].append(delta_loss(delta, targets8[t : t + 1], score))
        parts["mask"].append(F.binary_cross_entropy_with_logits(logits, truth))
    means = {name: torch.stack(values).mean() for name, values in parts.items()}
    return sum(means.values()), {name: value.item() for name, value in means.items()}


@dataclass(frozen=True)
class ReuseTrainConfig:
    steps: int = 3000
    clip_length: int = 5  # frame 0 (memory), frame 1 (full), frames 2-4 reused from frame 1
    crop: tuple[int, int] = (256, 384)
    lr: float = 1e-3
    weight_decay: float = 0.01
    max_gap: int = 3  # frames between clip frames: the reused frames lie 1 to 3 * gap back
    margin: float = 0.5  # m1: the gate target's floor grows from 0 to m1 over the first half
    tolerance: float = 0.0  # m2 of eq 5
    gate_target: str = "full"  # what P_gate predicts: see the module docstring
    strictness: float = 1.0  # the "full" target's exponent
    seed: int = 0
    heads: ReuseConfig = field(default_factory=ReuseConfig)


class ReuseTrainer(AddonTrainer):
    """AdamW on the reuse heads only; the memory network stays frozen and in eval mode."""

    def __init__(self, model: MemoryNetwork, sampler: ClipSampler, config: ReuseTrainConfig, run_dir: Path, device: torch.device) -> None:
        super().__init__(model, sampler, config, run_dir, device)
        self.heads = self.learner = ReuseHeads(config.heads).to(device)
        self.optimizer = torch.optim.AdamW(self.heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def margin(self) -> float:
        """Eq 4's m = m1 * progress, reaching m1 halfway through training."""
        return self.config.margin * min(1.0, 2.0 * self.step / max(1, self.config.steps))

    def loss(self, clip: Clip) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        return reuse_loss(self.model, self.heads, clip, self.margin(), c.tolerance, c.gate_target, c.strictness)

    def own_state(self) -> dict:
        return {"heads": self.heads.state_dict()}

    def load_own_state(self, state: dict) -> None:
        self.heads.load_state_dict(state["heads"])

    def save_heads(self, base: str) -> Path:
        path = self.run_dir / HEADS
        save_heads(self.heads, path, base, {"steps": str(self.step), "seed": str(self.config.seed)})
        return path

    def run(self, log: Callable[[str], None], every: int = 50, checkpoint_every: int = 250) -> None:
        run_steps(self, self.config.steps, log, every, checkpoint_every, status=lambda: f" margin {self.margin():.2f}")


def save_heads(heads: ReuseHeads, path: Path, base: str, extra: dict[str, str] | None = None) -> None:
    """The reuse heads as safetensors, naming the memory network they were trained on."""
    metadata = {"arch": REUSE_ARCH, "config": json.dumps(heads.config.to_dict(), sort_keys=True), "base": base, **(extra or {})}
    tensors = {name: t.detach().cpu().contiguous() for name, t in heads.state_dict().items()}
    write_file_atomically(path, lambda staging: save_file(tensors, str(staging), metadata=metadata), force=True)
