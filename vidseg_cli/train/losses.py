"""Losses for training the VOS heads."""

from __future__ import annotations

import torch


def bootstrapped_nll(probs: torch.Tensor, labels: torch.Tensor, top_p: float) -> torch.Tensor:
    """Bootstrapped cross-entropy: the mean over the ``top_p`` share of hardest pixels.

    probs (C, H, W) already sum to 1 per pixel (after soft aggregation); labels (H, W) int64.
    With top_p = 1 this is plain cross-entropy; lower values focus on the errors that are
    left once the easy background is learned (as STCN does).
    """
    picked = torch.gather(probs, 0, labels[None])[0]
    loss = -torch.log(picked.clamp_min(1e-6)).flatten()
    if top_p >= 1:
        return loss.mean()
    count = max(1, int(top_p * loss.numel()))
    return loss.topk(count).values.mean()
