"""Template similarity of STReMN eqs 1-2: the mean, over the pixels of one template, of
the cosine similarity to the best-matching pixel of the other."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Eq 1 needs an (HW x HW) matrix per pair; keys are pooled to at most this many pixels
# first, which keeps a pair under ~2 ms on a CPU while preserving the many-to-one match.
MAX_PIXELS = 1024


def template_similarity(key_i: torch.Tensor, key_j: torch.Tensor) -> float:
    """S(X_i, X_j) = 1/HW * sum_p max_q cos(X_i(p), X_j(q)); keys are (C, H, W)."""
    return similarity_of_pooled(pooled_key(key_i), pooled_key(key_j))


def similarity_of_pooled(a: torch.Tensor, b: torch.Tensor) -> float:
    """Eq 1 on keys already pooled by ``pooled_key``."""
    return float((a.t() @ b).amax(dim=1).mean())


def pooled_key(key: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (C, n) unit vectors, n <= MAX_PIXELS."""
    c, h, w = key.shape
    factor = 1
    while -(-h // factor) * -(-w // factor) > MAX_PIXELS:
        factor += 1
    if factor > 1:
        key = F.avg_pool2d(key[None], factor, ceil_mode=True)[0]
    return F.normalize(key.flatten(1), dim=0)
