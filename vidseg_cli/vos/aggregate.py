"""Soft aggregation of per-object probabilities (STM), shared by inference and training."""

from __future__ import annotations

import torch

_EPS = 1e-6


def aggregate(probs: torch.Tensor) -> torch.Tensor:
    """Soft aggregation (STM): per-object probabilities -> a distribution with background.

    ``probs`` (O, h, w) -> (1 + O, h, w), background first, summing to 1 per pixel.
    """
    p = probs.clamp(_EPS, 1 - _EPS)
    background = torch.prod(1 - p, dim=0, keepdim=True)
    p = torch.cat([background, p])
    logits = torch.log(p / (1 - p))
    return torch.softmax(logits, dim=0)
