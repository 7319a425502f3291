"""Edge-aware upsampling of coarse probabilities with a guided filter (He et al., 2010).

Propagation yields probabilities on the stride-8 grid, where one cell covers ~11 input
pixels of a 480p frame: bilinear upsampling alone leaves blurry, misplaced boundaries.
The guided filter fits, in every window, a linear model probability = a * intensity + b,
so object edges snap to image edges. Box filters use cumulative sums: O(pixels),
whatever the radius.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over (2r+1)^2 windows, clipped at the borders; x: (C, H, W)."""
    return _box_1d(_box_1d(x, radius, dim=1), radius, dim=2)


def _box_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    total = torch.cumsum(x, dim=dim)
    total = torch.cat([torch.zeros_like(total.narrow(dim, 0, 1)), total], dim=dim)  # S[0] = 0
    index = torch.arange(n, device=x.device)
    hi = (index + radius + 1).clamp(max=n)
    lo = (index - radius).clamp(min=0)
    sums = total.index_select(dim, hi) - total.index_select(dim, lo)
    shape = [1] * x.dim()
    shape[dim] = n
    return sums / (hi - lo).to(x.dtype).view(shape)


def guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """guide: (1, H, W) intensity in [0, 1]; source: (C, H, W). Returns (C, H, W)."""
    mean_i = box_filter(guide, radius)
    mean_p = box_filter(source, radius)
    cov_ip = box_filter(guide * source, radius) - mean_i * mean_p
    var_i = box_filter(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_filter(a, radius) * guide + box_filter(b, radius)


def refine_upsample(probs: torch.Tensor, image: torch.Tensor, radius: int = 4, eps: float = 1e-3) -> torch.Tensor:
    """probs: (C, h, w) on the feature grid; image: (3, H, W) RGB in [0, 255].

    Returns (C, H, W) probabilities, renormalised to sum to one per pixel.
    """
    size = image.shape[-2:]
    coarse = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    guide = (image.mean(0, keepdim=True) / 255.0)
    fine = guided_filter(guide, coarse, radius, eps).clamp_min(0)
    return fine / fine.sum(0, keepdim=True).clamp_min(1e-6)
