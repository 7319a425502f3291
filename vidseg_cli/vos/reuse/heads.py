"""Reuse-VOS's learned heads (Park et al., CVPR 2022), on the memory network's stride-8 level.

A frame first runs the backbone to stride 8 only. Template matching compares those
features and the previous frame's score map with a template of the first frame (TTVOS) and
yields D_t; the reuse gate turns D_t into P_gate (eq 1). When P_gate >= tau the rest of the
network is skipped (stride-16 blocks, key, memory read, the decoder down to stride 8): the
delta generator predicts the score change Delta_t, and the refine translator turns the
previous frame's refined map R8 and Delta_t into this frame's R8, which the decoder's
stride-4 stage finishes. Reused frames are not written to memory.

Each object is one batch item: its score map, template and gate are its own.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

REUSE_ARCH = "reuse-heads"
GATE_START = 0.15  # reuse probability at initialisation (the paper follows AIG's 15%)


@dataclass(frozen=True)
class ReuseConfig:
    feature_dim: int = 40  # EfficientNet-Lite0 stride-8 channels
    refined_dim: int = 48  # the memory network's decoder width at stride 8
    match_dim: int = 32  # c_f, channels of D_t
    gate_dim: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


class TemplateMatching(nn.Module):
    """D_t from [f8_t, S_{t-n}] compared with the first frame's foreground and background."""

    def __init__(self, config: ReuseConfig) -> None:
        super().__init__()
        self.embed = nn.Conv2d(config.feature_dim + 1, config.match_dim, 1)
        self.out = nn.Sequential(nn.Conv2d(config.match_dim + 3, config.match_dim, 3, padding=1), nn.ReLU(inplace=True))

    def template(self, features8: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """(O, 2, c_f): unit foreground and background prototypes of the first frame.

        features8 (1, C, h, w); score (O, 1, h, w), the first mask on the stride-8 grid."""
        embedded = self.embed(torch.cat([features8.expand(score.shape[0], -1, -1, -1), score], dim=1))
        weights = torch.cat([score, 1.0 - score], dim=1)  # (O, 2, h, w)
        pooled = torch.einsum("okhw,ochw->okc", weights, embedded) / weights.sum((2, 3))[..., None].clamp_min(1e-6)
        return F.normalize(pooled, dim=-1)

    def forward(self, features8: torch.Tensor, score: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
        """features8 (1 or O, C, h, w); score (O, 1, h, w) the previous frame's -> D_t (O, c_f, h, w)."""
        embedded = self.embed(torch.cat([features8.expand(score.shape[0], -1, -1, -1), score], dim=1))
        similarity = torch.einsum("ochw,okc->okhw", F.normalize(embedded, dim=1), template)  # to fg and bg
        return self.out(torch.cat([embedded, similarity, score], dim=1))


class ReuseGate(nn.Module):
    """Eq 1: P_gate = sigmoid(w2 * f(w1 * f(D_t))), f a max-pooling; one probability per object."""

    def __init__(self, config: ReuseConfig) -> None:
        super().__init__()
        self.first = nn.Conv2d(config.match_dim, config.gate_dim, 3, padding=1)
        self.second = nn.Conv2d(config.gate_dim, 1, 3, padding=1)
        with torch.no_grad():
            self.second.bias.fill_(math.log(GATE_START / (1.0 - GATE_START)))

    def forward(self, matched: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.first(F.max_pool2d(matched, 2, ceil_mode=True)))
        x = self.second(F.max_pool2d(x, 2, ceil_mode=True))
        return torch.sigmoid(x.mean((1, 2, 3)))  # (O,)


class RefineTranslator(nn.Module):
    """[R8_{t-n}, Delta_t] -> R8_t through dilated 3x3 convolutions (rates 1, 2, 4; Fig. 5a),
    a 1x1 merge and a residual block."""

    def __init__(self, config: ReuseConfig) -> None:
        super().__init__()
        width = config.refined_dim
        self.branches = nn.ModuleList(
            nn.Conv2d(width + 1, width // 2, 3, padding=rate, dilation=rate) for rate in (1, 2, 4)
        )
        self.merge = nn.Conv2d(3 * (width // 2), width, 1)
        self.res1 = nn.Conv2d(width, width, 3, padding=1)
        self.res2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, refined8: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        x = torch.cat([refined8, delta], dim=1)
        x = F.relu(self.merge(torch.cat([F.relu(branch(x)) for branch in self.branches], dim=1)))
        return F.relu(x + self.res2(F.relu(self.res1(x))))


class ReuseHeads(nn.Module):
    """Every learned part of the reuse path."""

    def __init__(self, config: ReuseConfig = ReuseConfig()) -> None:
        super().__init__()
        self.config = config
        self.matching = TemplateMatching(config)
        self.gate = ReuseGate(config)
        self.delta = nn.Conv2d(config.match_dim, 1, 3, padding=1)  # the delta generator: one layer
        self.translator = RefineTranslator(config)

    def gate_and_delta(
        self, features8: torch.Tensor, score: torch.Tensor, template: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P_gate (O,), Delta_t (O, 1, h, w) in [-1, 1]) for the current frame."""
        matched = self.matching(features8, score, template)
        return self.gate(matched), torch.tanh(self.delta(matched))


def gate_target(iou: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq 4: P_target = max(m, IoU), m growing from 0 to m1 over training (the IoU is
    eq 4's IoU(y_t, y_{t-n}) or the agreement with the full network: vos/reuse/train.py)."""
    return torch.clamp(iou, min=margin)


def gate_probability_loss(probability: torch.Tensor, target: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """Eq 5: max(m2, |P_gate - P_target|)^2, mean over objects."""
    return torch.clamp((probability - target).abs(), min=tolerance).pow(2).mean()


def delta_loss(delta: torch.Tensor, target: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Eq 3: L2 between Delta_t and y'_t - S_{t-n} on the stride-8 grid."""
    return F.mse_loss(delta, target - previous)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of binary masks (O, H, W) per object; 1 when both are empty."""
    a, b = a.flatten(1).bool(), b.flatten(1).bool()
    union = (a | b).sum(1)
    return torch.where(union > 0, (a & b).sum(1) / union.clamp_min(1), torch.ones_like(union, dtype=torch.float32))
