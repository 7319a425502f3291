"""The losses of `vidseg train reuse`: Reuse-VOS's heads learned on a frozen memory network.

A clip's frame 0 carries its mask and fills the memory; frame 1 runs the full network (the
last fully computed frame: its score map S and refined map R8 are what later frames reuse);
every later frame t takes the reuse path from frame 1, n = t - 1 frames back:

    Loss = Loss_gp (eqs 4-5) + Loss_delta (eq 3) + BCE(reused mask, y_t)   (eq 6)

The memory network does not change, so the full path needs no gradient, and the reuse path
is trained on every frame whatever its gate says: the gate learns only from Loss_gp, which
asks it to predict the IoU between y_t and y_{t-n}, lifted to at least the margin m.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidseg_cli.engine.aggregate import aggregate
from vidseg_cli.memory.bank import MemoryBank, Slot
from vidseg_cli.memory.policies import make_policy
from vidseg_cli.models.backbone import Features
from vidseg_cli.models.memnet import MemoryNetwork
from vidseg_cli.reuse.heads import (
    ReuseHeads,
    delta_loss,
    gate_probability_loss,
    gate_target,
    mask_iou,
)
from vidseg_cli.train.data import Clip


def on_grid(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(T, H, W) labels -> (T, 1, h, w) object coverage per cell."""
    return F.interpolate(masks[:, None].float(), size=grid, mode="area")


@torch.no_grad()
def full_path(model: MemoryNetwork, clip: Clip) -> tuple[Features, torch.Tensor, torch.Tensor]:
    """Features of every frame, and frame 1's refined map R8 (1, C, h8, w8) and object
    probability (1, 1, h4, w4) from memory holding frame 0 and its mask."""
    features = model.features(clip.images)
    keys = model.keys(features)
    first = Features(features.s4[:1], features.s8[:1], features.s16[:1])
    bank = MemoryBank(make_policy("stremn", 2, "C"), model.fusion())
    bank.write(Slot(keys[0], model.values(first, on_grid(clip.masks[:1], features.s4.shape[-2:]))[0], frame=0, permanent=True))
    readout = model.read(keys[1], bank.slots, 1)
    frame = Features(features.s4[1:2], features.s8[1:2], features.s16[1:2])
    refined8 = model.heads.decoder.refined8(readout, frame)
    logits = model.heads.decoder.finish(refined8, frame.s4)
    probability = aggregate(torch.sigmoid(logits))[1:]  # one object: soft aggregation as inference
    return features, refined8, probability[None]


def reuse_loss(model: MemoryNetwork, heads: ReuseHeads, clip: Clip, margin: float, tolerance: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq 6 averaged over frames 2.. of the clip, and its parts for the log."""
    features, refined8, probability = full_path(model, clip)
    grid8 = features.s8.shape[-2:]
    score = F.interpolate(probability, size=grid8, mode="area")  # S_{t-n} on the stride-8 grid
    targets8 = on_grid(clip.masks, grid8)
    template = heads.matching.template(features.s8[:1], targets8[:1])  # from frame 0 and its mask (S_0 = y'_0)
    parts = {"gate": [], "delta": [], "mask": []}
    for t in range(2, len(clip.masks)):
        gate, delta = heads.gate_and_delta(features.s8[t : t + 1], score, template)
        translated = heads.translator(refined8, delta)
        logits = model.heads.decoder.finish(translated, features.s4[t : t + 1])
        target = F.interpolate(clip.masks[t][None, None].float(), size=logits.shape[-2:], mode="area")[:, 0]
        iou = mask_iou(clip.masks[t][None], clip.masks[1][None])
        parts["gate"].append(gate_probability_loss(gate, gate_target(iou, margin), tolerance))
        parts["delta"].append(delta_loss(delta, targets8[t : t + 1], score))
        parts["mask"].append(F.binary_cross_entropy_with_logits(logits, target))
    means = {name: torch.stack(values).mean() for name, values in parts.items()}
    return sum(means.values()), {name: value.item() for name, value in means.items()}
