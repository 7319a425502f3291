"""The learned gates of region steps: which cells to compute, and whether a frame needs any.

Both are small heads over what the change test already measures (change.py) and what the
last output says; the memory network stays frozen and never runs for them, so they cost
microseconds and train in minutes on a CPU (``vidseg train gates``).

* The **cell gate** (SpVOS's gate, per 16x16 cell): P(compute), the probability that the
  network's output in the cell would differ from the output the cell last computed. A
  background cell that changed (a moving camera, a passer-by far away) keeps its output and
  need not run; a slight change on an object's edge may move it. ``--sparse residual`` and
  ``triple`` compute the cells whose P(compute) passes the file's threshold.
* The **frame gate** (Reuse-VOS's gate, per frame): P_gate, the probability that the last
  computed output agrees with what the network would give now (IoU >= ``AGREE`` for every
  object). ``--reuse TAU`` hands on the last result, running nothing, when P_gate >= TAU.

Where Reuse-VOS scores a frame from stride-8 features (the backbone's first half runs on
every frame), here it is scored from the change test's thumbnails: a reused frame costs a
decode, a 4x4 average and two tiny heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidseg_cli.vos.regions.boxes import dilate
from vidseg_cli.vos.regions.change import per_cell

GATE_ARCH = "region-gates"
AGREE = 0.95  # the IoU with the network's output at which a reused mask counts as agreeing
SCALE = 32.0  # grey levels: change features are divided by it, to be near 1
AGE_SCALE = 10.0  # frames

CELL_FEATURES = (
    "change",  # the change test: the cell's largest difference from its reference
    "change_mean",  # its mean difference
    "change_around",  # the largest change in the 3x3 cells around it (motion coming in)
    "object",  # the last output's largest object probability in the cell
    "edge",  # that probability's range in the cell: an object edge runs through it
    "object_near",  # an object within one cell
    "age",  # frames since the cell was last computed
)
FRAME_FEATURES = (
    "gate_max",  # the largest cell P(compute) near the objects
    "gate_mean",  # their mean
    "gate_share",  # the share of cells near the objects the cell gate would compute
    "change_max",  # the largest change near the objects
    "age",  # frames since the last computed frame
    "objects",  # the share of the frame the objects cover
)


def cell_features(
    residual: torch.Tensor, probs: torch.Tensor, age: torch.Tensor, grid: tuple[int, int], near: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (F, h16, w16), near (h16, w16) bool) from the change test's residual
    (h4, w4), the last output ``probs`` (O, h4, w4) and each cell's ``age`` (h16, w16)."""
    change = per_cell(residual, "max", grid)
    strongest = probs.amax(0) if probs.shape[0] else residual.new_zeros(residual.shape)
    top, low = per_cell(strongest, "max", grid), per_cell(strongest, "min", grid)
    objects = top > 0.5
    features = torch.stack(
        [
            change / SCALE,
            per_cell(residual, "mean", grid) / SCALE,
            F.max_pool2d(change[None, None], 3, stride=1, padding=1)[0, 0] / SCALE,
            top,
            top - low,
            dilate(objects, 1).float(),
            age.float().clamp(max=3 * AGE_SCALE) / AGE_SCALE,
        ]
    )
    return features, dilate(objects, near)


def frame_features(cell_gate: torch.Tensor, features: torch.Tensor, near: torch.Tensor, threshold: float) -> torch.Tensor:
    """(G,) from the cell gate's P(compute) (h16, w16), the cell features and the cells near
    the objects."""
    watched = bool(near.any())
    gate = cell_gate[near] if watched else cell_gate.new_zeros(1)
    change = features[0][near] if watched else cell_gate.new_zeros(1)
    return torch.stack(
        [
            gate.max(),
            gate.mean(),
            (gate > threshold).float().mean(),
            change.max(),
            features[6].min(),
            (features[3] > 0.5).float().mean(),
        ]
    )


class RegionGates(nn.Module):
    """The cell gate (a two-layer perceptron per cell, as 1x1 convolutions) and the frame
    gate (a logistic regression)."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.cell = nn.Sequential(
            nn.Conv2d(len(CELL_FEATURES), hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1)
        )
        self.frame = nn.Linear(len(FRAME_FEATURES), 1)

    def cell_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F, h, w) -> (N, h, w)."""
        return self.cell(features)[:, 0]

    def frame_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, G) -> (N,)."""
        return self.frame(features)[:, 0]


def agreement(last: torch.Tensor, now: torch.Tensor) -> torch.Tensor:
    """The smallest IoU over objects between two outputs (O, h, w) as masks (p > 0.5); an
    object absent from both agrees."""
    if not last.shape[0]:
        return last.new_tensor(1.0)
    a, b = last > 0.5, now > 0.5
    union = (a | b).flatten(1).sum(1)
    inter = (a & b).flatten(1).sum(1)
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union, dtype=torch.float))
    return iou.min()


def cell_targets(last: torch.Tensor, now: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(h16, w16) in [0, 1]: how much of each cell's mask the new output changes (a quarter
    of its stride-4 pixels or more counts fully)."""
    if not last.shape[0]:
        return last.new_zeros(grid)
    flipped = ((last > 0.5) != (now > 0.5)).any(0).float()
    return (per_cell(flipped, "mean", grid) * 4).clamp(max=1)

