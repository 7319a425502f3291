"""The learned STReMN fusion cell (eqs 3-8): distill a dropped slot into its partner.

A template is X = [key; value] per object. FAM (eq 3) aligns one template to another's
pixels by key attention. The filter gate r (eqs 4-6) removes from the dropped template
X_i what no longer matches the target X_j; the update gates z and n (eqs 7-8) blend the
aligned, filtered X_i into X_j like a convolutional GRU.

Several objects: each object's template [key; value_o] goes through the cell as one batch
item, and the fused slot keeps the mean of the updated keys (for one object, exactly the
paper's cell).

Candidate (eq 8): the paper's n = tanh(g(.)) bounds the fused template to [-1, 1], while
our values are unbounded conv features, so every fusion also shrinks the values it
touches. ``candidate="aligned"`` makes n the aligned source plus a bounded learned
correction, n = X_i^A + tanh(g(.)), and starts z small: the cell begins as a gentle
version of the training-free blend and learns where to depart from it.
``"aligned-values"`` applies that correction to the values only: on unit keys it is out of
scale (see forward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.memory.slot import Slot


def fam(anchor: torch.Tensor, other: torch.Tensor, key_dim: int, scale: torch.Tensor | float) -> torch.Tensor:
    """FAM(anchor, other) = softmax(anchor other^T) other, eq 3, on (B, C, h, w) templates.

    The affinity is the cosine of the key channels times ``scale``; the result has
    ``other``'s channels on ``anchor``'s pixels.
    """
    b, c, h, w = anchor.shape
    a = F.normalize(anchor[:, :key_dim].flatten(2), dim=1)
    o = F.normalize(other[:, :key_dim].flatten(2), dim=1)
    attention = torch.softmax(a.transpose(1, 2) @ o * scale, dim=2)  # (B, N_anchor, N_other)
    return (other.flatten(2) @ attention.transpose(1, 2)).view(b, c, h, w)


FUSION_CANDIDATES = ("tanh", "aligned", "aligned-values")


class FusionCell(nn.Module):
    def __init__(self, key_dim: int, value_dim: int, hidden: int = 64, candidate: str = "tanh") -> None:
        super().__init__()
        if candidate not in FUSION_CANDIDATES:
            raise ValueError(f"unknown fusion candidate {candidate!r}; choose from {', '.join(FUSION_CANDIDATES)}")
        channels = key_dim + value_dim
        self.key_dim = key_dim
        self.aligned = candidate.startswith("aligned")
        self.values_only = candidate == "aligned-values"
        self.filter = nn.Sequential(  # f of eq 5
            nn.Conv2d(2 * channels, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )
        self.trunk = nn.Sequential(nn.Conv2d(2 * channels, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.gate = nn.Conv2d(hidden, channels, 1)  # h of eq 7
        self.candidate = nn.Conv2d(hidden, channels, 1)  # g of eq 8
        self.log_scale = nn.Parameter(torch.tensor(math.log(14.0)))  # FAM sharpness, learned
        if self.aligned:
            nn.init.constant_(self.gate.bias, -2.0)  # z ~ 0.12 at the start
            nn.init.zeros_(self.candidate.weight)  # n = X_i^A at the start
            nn.init.zeros_(self.candidate.bias)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """source X_i, target X_j: (B, C, h, w) -> the updated X_j."""
        scale = self.log_scale.exp()
        target_on_source = fam(source, target, self.key_dim, scale)  # X_j^A, eq 4
        r = torch.sigmoid(self.filter(torch.cat([source, target_on_source], 1)))  # eq 5
        filtered = r * source  # eq 6
        source_on_target = fam(target, filtered, self.key_dim, scale)  # X_i^A, eq 7
        hidden = self.trunk(torch.cat([source_on_target, target], 1))
        z = torch.sigmoid(self.gate(hidden))  # eq 7
        n = torch.tanh(self.candidate(hidden))  # eq 8
        if self.values_only:
            # keys are unit vectors (entries ~0.1) and tanh's correction is up to 1 per
            # channel: on keys it swamps them (vos-effl0's fused keys: cosine 0.12 to the
            # target's, so fused slots are hardly ever read). Keys blend as aligned.
            n = torch.cat([torch.zeros_like(n[:, : self.key_dim]), n[:, self.key_dim :]], 1)
        if self.aligned:
            n = source_on_target + n
        return (1 - z) * target + z * n


class LearnedFusion:
    """Adapts a FusionCell to the memory bank's slots (key (Ck, h, w), value (O, Cv, h, w))."""

    def __init__(self, cell: FusionCell) -> None:
        self.cell = cell

    def __call__(self, source: Slot, target: Slot) -> Slot:
        return self.many([(source, target)])[0]

    def many(self, pairs: Sequence[tuple[Slot, Slot]]) -> list[Slot]:
        """Fuse several (source, target) pairs of equal-sized slots in one pass of the cell."""
        counts = [min(source.value.shape[0], target.value.shape[0]) for source, target in pairs]
        sources = torch.cat([_templates(source, n) for (source, _), n in zip(pairs, counts, strict=True)])
        targets = torch.cat([_templates(target, n) for (_, target), n in zip(pairs, counts, strict=True)])
        fused_all = self.cell(sources, targets).split(counts)
        results = []
        for (_, target), fused, objects in zip(pairs, fused_all, counts, strict=True):
            key = F.normalize(fused[:, : self.cell.key_dim].mean(0), dim=0)  # keys stay unit vectors
            value = torch.cat([fused[:, self.cell.key_dim :], target.value[objects:]])
            results.append(replace(target, key=key, value=value))
        return results


def _templates(slot: Slot, objects: int) -> torch.Tensor:
    """(objects, Ck + Cv, h, w): the slot's key beside each object's value."""
    key = slot.key.expand(objects, *slot.key.shape)
    return torch.cat([key, slot.value[:objects]], dim=1)
