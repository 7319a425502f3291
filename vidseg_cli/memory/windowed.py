"""Differentiable memory attention over T memory frames with a softmax over every candidate:
within a local window (LMANet eqs 3-5) or over the whole map (TMANet eq 1).

Unlike ``attention.py``'s top-k matching (segment's propagation read), every candidate
gets a weight and gradients reach every key and value, which training the semseg memory
layers needs. Affinity is the scaled dot product of learned keys, as both papers use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def windowed_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, radius: int, scale: float | torch.Tensor
) -> torch.Tensor:
    """LMANet's local memory attention.

    query (B, C, H, W); keys (B, T, C, H, W); values (B, T, D, H, W). For each position,
    the (2R+1)^2 memory positions around it in each of the T frames are candidates (eq 3);
    one softmax over window and time (eq 4) weights their values (eq 5). Positions beyond
    the border are not candidates. Returns (B, D, H, W).
    """
    b, t, c, h, w = keys.shape
    d = values.shape[2]
    window = 2 * radius + 1
    k = F.unfold(keys.flatten(0, 1), window, padding=radius).view(b, t, c, window * window, h * w)
    v = F.unfold(values.flatten(0, 1), window, padding=radius).view(b, t, d, window * window, h * w)
    inside = F.unfold(keys.new_ones(1, 1, h, w), window, padding=radius).view(1, 1, window * window, h * w) > 0
    affinity = torch.einsum("bcn,btcwn->btwn", query.flatten(2), k) * scale
    affinity = affinity.masked_fill(~inside, float("-inf"))
    weights = torch.softmax(affinity.flatten(1, 2), dim=1).view(b, t, 1, window * window, h * w)
    return (weights * v).sum(dim=(1, 3)).view(b, d, h, w)


def global_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """TMANet's temporal memory attention (eq 1): every position of every memory frame is a
    candidate. Shapes as ``windowed_attention``."""
    b, t, c, h, w = keys.shape
    d = values.shape[2]
    memory_keys = keys.permute(0, 2, 1, 3, 4).reshape(b, c, t * h * w)  # (B, C, M)
    memory_values = values.permute(0, 2, 1, 3, 4).reshape(b, d, t * h * w)  # (B, D, M)
    affinity = memory_keys.transpose(1, 2) @ (query.flatten(2) * scale)  # (B, M, N): scale on the small factor
    weights = torch.softmax(affinity, dim=1)
    return (memory_values @ weights).view(b, d, h, w)
